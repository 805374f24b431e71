"""From what the SSH client asked for to the argv that runs in the container.

  shell request (SSH_ORIGINAL_COMMAND unset) -> session.shell
  the host's sftp subsystem command line      -> the container's sftp server
  anything else, including ""                 -> /bin/sh -c <command>
"""

from __future__ import annotations

import shlex

SH = "/bin/sh"


def plan(command: bytes | None, session_cfg) -> tuple[str, list[str]]:
    """`session_cfg`: the typed `session` settings."""
    if command is None:
        return "shell", list(session_cfg.shell)
    try:
        text = command.decode("utf-8")
    except UnicodeDecodeError:
        return "exec", [SH, "-c", _rebuild_bytes(command)]
    if text.strip() in session_cfg.host_sftp_commands:
        return "subsystem", sftp_argv(session_cfg.subsystems.sftp)
    return "exec", [SH, "-c", text]


# What a command is, for the log, the metrics and `hatchway sessions`: the
# first word of an exec says which file-transfer tool is on the other end.
CLASSES = {"scp": "scp", "rsync": "rsync", "git-upload-pack": "git", "git-receive-pack": "git",
           "git-upload-archive": "git"}


def command_class(kind: str, command: bytes | None) -> str:
    """shell, sftp, scp, rsync, git or exec."""
    if kind == "shell":
        return "shell"
    if kind == "subsystem":
        return "sftp"
    first = (command or b"").split(maxsplit=1)[:1]
    return CLASSES.get(first[0].decode("ascii", "replace"), "exec") if first else "exec"


def sftp_argv(candidates: list[str]) -> list[str]:
    """Run the first sftp server the image has; say so clearly if it has none."""
    if not candidates:
        return [SH, "-c", _no_sftp("none configured")]
    tried = " ".join(shlex.quote(c) for c in candidates)
    script = (f'for p in {tried}; do [ -x "$p" ] && exec "$p"; done; '
              + _no_sftp(", ".join(candidates)))
    return [SH, "-c", script]


def _no_sftp(tried: str) -> str:
    # On stdout: sshd discards a subsystem's stderr, and hatchway/daemon/sftp_fallback.py
    # turns this line into SFTP answers the client shows.
    msg = f"hatchway: this environment has no sftp server (tried {tried})"
    return f"echo {shlex.quote(msg)}; exit 127"


def _rebuild_bytes(command: bytes) -> str:
    """The Docker API carries strings as JSON, which cannot hold bytes that are
    not UTF-8.  Such a command travels as printf octal escapes (pure ASCII) and
    is rebuilt byte for byte by the container's shell; the trailing `x` keeps
    $(...) from eating final newlines."""
    octal = "".join(f"\\{b:03o}" for b in command)
    return f"c=$(printf '{octal}x'); exec {SH} -c \"${{c%x}}\""
