"""The built .deb itself: lintian, contents, control fields, man pages."""

from __future__ import annotations

import gzip
import re
import subprocess
import io
import tarfile
from pathlib import Path

import click

from . import layout
from .conftest import ROOT


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def data_members(deb: Path) -> dict[str, tarfile.TarInfo]:
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {"/" + m.name.lstrip("./").rstrip("/"): m for m in tar.getmembers()
                if m.name not in (".", "./")}


def extract(deb: Path, path: str) -> bytes:
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return tar.extractfile("." + path).read()


# ------------------------------------------------------------------ lintian

def test_lintian_has_no_errors_or_warnings(deb):
    p = run(["lintian", "--pedantic", "--display-info", "--tag-display-limit", "0", str(deb)])
    tags = [ln for ln in p.stdout.splitlines() if re.match(r"^[EWIPX]: ", ln)]
    print("\n".join(tags) or "lintian: no tags")
    bad = [t for t in tags if t[0] in "EW"]
    assert not bad, "lintian:\n" + "\n".join(bad)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_lintian_override_is_justified():
    """Each block of overrides follows a comment that says why."""
    commented = False
    for ln in (ROOT / "debian/hatchway.lintian-overrides").read_text().splitlines():
        if ln.startswith("#"):
            commented = True
        elif ln.strip():
            assert commented, f"override without a comment justifying it: {ln}"
        else:
            commented = False


# ------------------------------------------------------------------ contents

def test_contents_follow_the_layout(deb):
    members = data_members(deb)
    entries = {path: (_mode(m), m.uname, m.gname) for path, m in members.items()}
    assert layout.problems(entries) == []


def _mode(m: tarfile.TarInfo) -> str:
    kind = "d" if m.isdir() else "l" if m.issym() else "-"
    bits = "".join(ch if m.mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return kind + bits


def test_programs_start_with_the_right_interpreter(deb):
    for path, first in layout.PROGRAMS.items():
        assert extract(deb, path).split(b"\n", 1)[0].decode() == first, path


def test_shipped_templates_are_the_work_tree_files(deb):
    assert extract(deb, "/usr/share/hatchway/sshd_config.d/10-hatchway.conf") == \
        (ROOT / "sshd_config.d/10-hatchway.conf").read_bytes()
    assert extract(deb, "/etc/hatchway/hatchway.yaml") == \
        (ROOT / "packaging/hatchway.yaml").read_bytes()
    assert extract(deb, "/lib/systemd/system/hatchway.service") == \
        (ROOT / "packaging/systemd/hatchway.service").read_bytes()


def test_nothing_ships_into_sshd_config(deb):
    assert not [p for p in data_members(deb) if p.startswith("/etc/ssh")]


def test_conffiles_are_exactly_the_config(deb):
    raw = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        conffiles = tar.extractfile("./conffiles").read().decode().split()
        triggers = tar.extractfile("./triggers").read().decode()
    assert conffiles == layout.CONFFILES
    assert "interest-noawait /usr/sbin/dockerd" in triggers


def test_dependencies(deb):
    depends = field(deb, "Depends")
    for floor in ("python3-click (>= 8.1)", "python3-yaml (>= 6.0)", "openssh-server",
                  "adduser", "python3:any (>= 3.11~)"):
        assert floor in depends
    # the code speaks the Docker Engine API and HTTP itself (hatchway/core/http11.py)
    for unused in ("python3-docker", "python3-requests", "python3-kubernetes"):
        assert unused not in depends
    recommends = field(deb, "Recommends")
    assert "docker.io" in recommends and "python3-kubernetes (>= 22.6)" in recommends
    assert field(deb, "Architecture") == "all"


def test_maintainer_scripts_parse():
    for name in ("postinst", "postrm"):
        p = run(["sh", "-n", str(ROOT / "debian" / name)])
        assert p.returncode == 0, f"{name}: {p.stderr}"


# ------------------------------------------------------------------ man pages

def man_text(deb: Path, page: str) -> str:
    return gzip.decompress(extract(deb, page)).decode()


def test_man_pages_render_without_warnings(deb, tmp_path):
    for page in sorted(layout.MAN_PAGES):
        src = tmp_path / Path(page).name
        src.write_bytes(extract(deb, page))
        p = run(["man", "--warnings", "-l", str(src)], env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8",
                                                             "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0 and p.stderr == "", f"{page}: {p.stderr}"
        assert "NAME" in p.stdout and "SEE ALSO" in p.stdout, page


def test_every_config_key_is_documented(deb):
    """hatchway.yaml(5) names every key of the schema, and only those."""
    from hatchway.core import config

    def leaves(schema, prefix=""):
        for k, v in schema.fields.items():
            if isinstance(v, config.S):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield prefix + k

    schema_keys = set(leaves(config.schema()))
    text = man_text(deb, "/usr/share/man/man5/hatchway.yaml.5.gz")
    keys = text.split(".SH KEYS", 1)[1].split("\n.SH ", 1)[0]
    documented = {m.replace("\\-", "-") for m in re.findall(r"^\.TP\n\.B (\S+)$", keys, re.M)}
    assert sorted(schema_keys - documented) == [], "keys missing from hatchway.yaml(5)"
    assert sorted(documented - schema_keys) == [], "hatchway.yaml(5) documents unknown keys"


def test_every_subcommand_is_documented(deb):
    """hatchway(8) has a section for every command `hatchway` has."""
    from hatchway.admin.main import cli

    def commands(group, prefix):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from commands(cmd, f"{prefix} {name}")
            else:
                yield f"{prefix} {name}"

    text = man_text(deb, "/usr/share/man/man8/hatchway.8.gz").replace("\\-", "-")
    sections = set(re.findall(r'^\.SS "(hatchway [^"]+)"$', text, re.M))
    assert sorted(set(commands(cli, "hatchway")) - sections) == []
