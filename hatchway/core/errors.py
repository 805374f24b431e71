"""Exceptions and results shared by the key helper's modules, apart from the
modules that produce them, so that hatchway-keys can catch and build them
without importing the config schema or the HTTP client on every run."""


class ConfigError(Exception):
    """A config problem, already phrased as `file:line: key: what is wrong`."""


class Decision:
    """What hatchway-keys answers sshd: yes (with extra authorized_keys
    options) or no, and why.  A plain class: `dataclasses` costs ~8 ms to import."""
    __slots__ = ("allowed", "reason", "options")

    def __init__(self, allowed: bool, reason: str, options: list | None = None):
        self.allowed = allowed
        self.reason = reason
        self.options = [] if options is None else options

    def __eq__(self, other):
        if not isinstance(other, Decision):
            return NotImplemented
        return (self.allowed, self.reason, self.options) == \
            (other.allowed, other.reason, other.options)

    def __repr__(self):
        return f"Decision({self.allowed}, {self.reason!r}, {self.options!r})"
