from hatchway.core.policy import Violation


def check(section: dict, policy: dict, webhook_mounts: list) -> None:
    if section.get("greeting") == "forbidden":
        raise Violation("dummy.greeting", "that greeting is not allowed")
