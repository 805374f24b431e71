"""`make lint`: imports point one way.  Each folder of hatchway/ may import
only the folders listed for it here; a cycle or an upward import is a
failure with the file and line.

The one exception is by design: core/config.py reads the backend registry
(backends/registry.py, a table of names) to put each backend's own config
section into the schema, because hatchway.yaml holds them all.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hatchway"
ALLOWED = {
    "core": {"core"},
    "shell": set(),
    "keys": {"core", "keys"},
    "webhook": {"core", "webhook"},
    "backends": {"core", "backends"},
    "daemon": {"core", "backends", "shell", "daemon"},
    "admin": {"core", "backends", "webhook", "daemon", "admin"},
}
EXCEPTIONS = {("core/config.py", "hatchway.backends.registry")}


def part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if bits[0] == "hatchway" and len(bits) > 1 else None


def imports(path: Path):
    """(line, absolute module) of every import of ours in `path`."""
    rel = path.relative_to(ROOT).with_suffix("")
    here = list(rel.parts) if rel.name != "__init__" else list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(here[:len(here) - node.level] + ([mod] if mod else []))
            for a in node.names:             # `from x import y`: y may be a module
                yield node.lineno, f"{mod}.{a.name}"


def main() -> int:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        mine = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if mine not in ALLOWED:
            continue
        for line, module in imports(path):
            other = part(module)
            if other is None or other in ALLOWED[mine] or other == "__init__":
                continue
            if (rel.as_posix(), module) in EXCEPTIONS:
                continue
            problems.append(f"hatchway/{rel}:{line}: {mine} imports {module}")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
