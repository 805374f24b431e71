"""What the .deb must contain, shared by the checks on the archive
(`dpkg-deb -c`) and on an installed root (`dpkg -L` plus stat)."""

from __future__ import annotations

PROGRAMS = {
    # path: first line (the interpreter flags matter: -I ignores the user's
    # environment, -S skips site for the two programs sshd runs per login)
    "/usr/bin/hatchway": "#!/usr/bin/python3 -I",
    "/usr/sbin/hatchwayd": "#!/usr/bin/python3 -I",
    "/usr/lib/hatchway/hatchway-keys": "#!/usr/bin/python3 -IS",
    "/usr/lib/hatchway/hatchway-shell": "#!/usr/bin/python3 -IS",
    "/usr/lib/hatchway/hatchway-netguard": "#!/usr/bin/python3 -I",
    "/usr/lib/hatchway/hatchway-portrelay": "#!/usr/bin/python3 -I",
}
MAN_PAGES = {
    "/usr/share/man/man8/hatchway.8.gz",
    "/usr/share/man/man8/hatchwayd.8.gz",
    "/usr/share/man/man8/hatchway-keys.8.gz",
    "/usr/share/man/man8/hatchway-shell.8.gz",
    "/usr/share/man/man5/hatchway.yaml.5.gz",
}
REQUIRED = {
    *PROGRAMS, *MAN_PAGES,
    "/etc/hatchway/hatchway.yaml",
    "/usr/share/hatchway/sshd_config.d/10-hatchway.conf",
    "/usr/share/hatchway/hatchway/daemon/main.py",
    "/usr/share/hatchway/hatchway/keys/main.py",
    "/lib/systemd/system/hatchway.service",
    "/lib/systemd/system/hatchway-webhook.service",
    "/lib/systemd/system/hatchway-netguard.service",
    "/usr/lib/tmpfiles.d/hatchway.conf",
    "/usr/share/doc/hatchway/copyright",
}
CONFFILES = ["/etc/hatchway/hatchway.yaml"]
# Everything the package ships must live under one of these.
ALLOWED_PREFIXES = (
    "/etc/hatchway/", "/usr/share/hatchway/", "/usr/lib/hatchway/", "/usr/share/doc/hatchway/",
    "/usr/share/man/", "/lib/systemd/system/hatchway", "/usr/lib/tmpfiles.d/hatchway.conf",
    "/usr/share/python3/runtime.d/hatchway.rtupdate", "/usr/share/lintian/overrides/hatchway",
    "/usr/bin/hatchway", "/usr/sbin/hatchwayd",
)


def problems(entries: dict[str, tuple[str, str, str]]) -> list[str]:
    """entries: path (no trailing slash) -> (type and mode as `ls -l` shows
    them, owner, group).  Returns every way the listing departs from the layout
    above.  Directories are held to the same ownership rules as files: sshd
    refuses an AuthorizedKeysCommand with a directory anyone but root can write
    on its path."""
    out = []
    for path in sorted(REQUIRED - set(entries)):
        out.append(f"missing {path}")
    for path, (mode, owner, group) in sorted(entries.items()):
        if (owner, group) != ("root", "root"):
            out.append(f"{path} is owned by {owner}:{group}, not root:root")
        if mode[0] != "l" and (mode[5] == "w" or mode[8] == "w"):
            out.append(f"{path} is writable by group or others ({mode})")
        if mode[0] in "dl":     # directories, and /lib -> usr/lib on merged-/usr roots
            continue
        if not path.startswith(ALLOWED_PREFIXES):
            out.append(f"{path} is outside Hatchway's own directories")
        if "/dist-packages/" in path or ".dist-info" in path or "/__pycache__/" in path \
                or "/tests/" in path or ".egg-info" in path:
            out.append(f"{path} should not be shipped")
        if path in PROGRAMS and mode[:10] != "-rwxr-xr-x":
            out.append(f"{path} has mode {mode}, not -rwxr-xr-x")
    return out
