"""Checks against ContainerSSH's published webhook schemas (tests/data)."""

import json
from pathlib import Path

import jsonschema

SPEC = json.loads((Path(__file__).parent / "data" / "containerssh-authconfig.json").read_text())


def check(instance, definition: str) -> None:
    """Raise jsonschema.ValidationError unless `instance` fits the named definition."""
    schema = {"$ref": f"#/definitions/{definition}", "definitions": SPEC["definitions"]}
    jsonschema.Draft4Validator(schema).validate(instance)


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SPEC["definitions"][schema["$ref"].split("/")[-1]]
    return schema


def unknown_keys(instance, definition: str) -> list[str]:
    """Keys of `instance` that the schema does not know (compared the way Go's
    decoder does, ignoring case).  jsonschema alone allows any extra key."""
    out: list[str] = []

    def walk(value, schema, path):
        schema = _resolve(schema)
        if isinstance(value, dict) and "properties" in schema:
            props = {k.lower(): v for k, v in schema["properties"].items()}
            for k, v in value.items():
                if k.lower() not in props:
                    out.append(f"{path}{k}")
                else:
                    walk(v, props[k.lower()], f"{path}{k}.")
        elif isinstance(value, list) and "items" in schema:
            for v in value:
                walk(v, schema["items"], path)

    walk(instance, {"$ref": f"#/definitions/{definition}"}, "")
    return out
