"""The `dummy:` section of hatchway.yaml."""

from hatchway.core.config import PATH, T, section


@section
class Settings:
    state_dir: str = PATH("/tmp/hatchway-dummy")     # where "containers" are recorded
    greeting: str | None = T("str", None)            # printed before every command


DAEMON_WIDE = ("state_dir",)
WEBHOOK_MAY_SET = ["greeting"]
