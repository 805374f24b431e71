"""The errors Hatchway shows people, and the key helper's decision.

Apart from the modules that raise them, so that hatchway-keys can catch and
build them without importing the config schema or the HTTP client on every
run."""


def one_line(text: str) -> str:
    """`text` with every unprintable character escaped: messages quote what
    users sent (paths, names), and a newline in one would forge a second
    line in whatever log or terminal shows it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class HatchwayError(Exception):
    """What went wrong, for a person: `message` is one line fit for whoever
    caused it (an SSH user sees it as `hatchway: <message>`, an admin as the
    command's error); `log_reason` is what the log says, which may name what
    the person must not see (host paths, engine errors); `code` is the exit
    status it ends with (255 for a session that never ran, as ssh does)."""
    code = 1

    def __init__(self, message: str, log_reason: str | None = None, code: int | None = None):
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.log_reason = log_reason or message
        if code is not None:
            self.code = code


class ConfigError(HatchwayError):
    """A config problem, already phrased as `file:line: key: what is wrong`."""
    code = 2


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
