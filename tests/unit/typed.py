"""Typed config objects for unit tests: defaults plus what a test sets."""

from hatchway.core import config


def section(name: str, **values):
    """One section of hatchway.yaml (`session`, `docker`, ...), typed."""
    spec = config.schema().fields[name]
    return config.build(spec, config.merge(config.defaults(spec), config.validate(values, spec, name)))


def whole(cfg: dict | None = None):
    """The whole config, typed: defaults merged with `cfg` (a validated mapping)."""
    return config.typed(config.merge(config.defaults(), cfg or {}))
