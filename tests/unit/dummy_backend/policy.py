from hatchway.core.policy import Violation


def check(section: dict, policy: dict, origin) -> None:
    if section.get("greeting") == "forbidden":
        raise Violation("dummy.greeting", "that greeting is not allowed")
