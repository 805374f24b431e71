from hatchway.core.containerssh import refuse_rest


def translate(section: dict, out: dict) -> None:
    if "greeting" in section:
        out.setdefault("dummy", {})["greeting"] = section["greeting"]
    refuse_rest(section, {"greeting"}, "dummy")
