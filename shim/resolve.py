"""The configuration one session runs with: the file's, with per-user templates
filled in and the config webhook's answer merged on top, checked against the
admin's policy.  Called once per session, after the user is identified and
before anything is created.
"""

from __future__ import annotations


class ConfigRefused(Exception):
    """This session's configuration is not allowed or not available; the message
    is one line for the user."""


def effective_config(base: dict, *, user: str, uid: int, remote_address: str,
                     connection_id: str) -> dict:
    return base
