"""The container backends, under the names `backend:` takes in hatchway.yaml.

Adding a backend is its own folder plus one line in BACKENDS.  A backend
package provides, by convention:

  settings.py      Settings: its config section (a core.config @section
                   class), in hatchway.yaml under the backend's name;
                   DAEMON_WIDE: keys of it that `groups:` entries and the
                   config webhook may never change (where the daemon connects);
                   WEBHOOK_MAY_SET: keys the config webhook may set by default.
  policy.py        check(section, policy, origin): the admin policy on
                   its section (called by daemon/policy.py); origin
                   (core/policy.Origin) says whose session it is and what
                   the config webhook set.
  containerssh.py  translate(section, out): ContainerSSH's config-webhook
                   section of the same name (called by daemon/containerssh.py).
  backend.py       BACKEND: its Backend class (backends/base.py).

settings.py must stay cheap to import: hatchway-keys reads the schema (not
the backends) whenever the config file changed.
"""

from __future__ import annotations

import importlib

BACKENDS = {
    "docker": "hatchway.backends.docker",
    "kubernetes": "hatchway.backends.kubernetes",
}


def settings(name: str):
    """The settings module of backend `name`."""
    return importlib.import_module(BACKENDS[name] + ".settings")


def policy(name: str):
    return importlib.import_module(BACKENDS[name] + ".policy")


def containerssh(name: str):
    return importlib.import_module(BACKENDS[name] + ".containerssh")


def backend_class(name: str):
    return importlib.import_module(BACKENDS[name] + ".backend").BACKEND


def make(cfg):
    """The Backend the (typed) config asks for."""
    return backend_class(cfg.backend)(cfg)
