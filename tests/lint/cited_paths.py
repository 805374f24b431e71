"""`make lint`: every file a comment or docstring of ours cites exists in this
repository.  A note that points at a file nobody can open is worse than none.

Cited paths are read as written: relative to the repository, to hatchway/
(modules name each other that way), or to the citing file's own folder.
Upstream sources (a .go file of moby, a .c file of OpenSSH) are not ours to
check, and neither are absolute paths on an installed host.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITED = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]+\.(?:py|md|yaml|yml|json|conf|service|txt))\b"
                   r"|(?<![\w.-])((?:notes|shared)/[\w./-]+)")


def sources() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = []
    for name in out:
        p = ROOT / name
        if name.startswith("tests/data/") or not p.is_file():
            continue
        if p.suffix == ".py" or (p.suffix == "" and p.read_bytes()[:2] == b"#!"):
            files.append(p)
    return files


def prose(text: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring; for a script that is not
    Python (sh), of every comment."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return [(n, line.split("#", 1)[1]) for n, line in enumerate(text.splitlines(), 1)
                if "#" in line]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.append((body[0].lineno, body[0].value.value))
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def missing(path: Path) -> list[str]:
    bad = []
    for line, words in prose(path.read_text(errors="replace")):
        for m in CITED.finditer(words):
            cited = m.group(1) or m.group(2)
            candidates = [ROOT / cited, ROOT / "hatchway" / cited, path.parent / cited]
            if cited.startswith(("notes/", "shared/")):
                candidates = []         # the team's own notes live outside the repository
            if not any(c.exists() for c in candidates):
                bad.append(f"{path.relative_to(ROOT)}:{line}: cites {cited}, which is not here")
    return bad


def main() -> int:
    problems = [p for f in sources() for p in missing(f)]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
