"""`hatchway sshd enable|disable`: the drop-in that sends hatchway-users into
containers (admin/sshd_snippet.py does the work and proves it with sshd)."""

from __future__ import annotations

import click

from . import sshd_snippet
from .common import fail


@click.group()
def sshd():
    """The sshd drop-in that routes hatchway-users into containers."""


@sshd.command("enable")
@click.option("--template", default=sshd_snippet.TEMPLATE, show_default=True)
def sshd_enable(template):
    """Install the drop-in, validate it with sshd -t / -T, reload sshd."""
    try:
        for note in sshd_snippet.enable(template):
            click.echo(note)
    except (sshd_snippet.SnippetError, OSError) as e:
        fail(str(e))
    click.echo(f"enabled {sshd_snippet.TARGET}")


@sshd.command("disable")
def sshd_disable():
    """Remove the drop-in and reload sshd."""
    try:
        for note in sshd_snippet.disable():
            click.echo(note)
    except (sshd_snippet.SnippetError, OSError) as e:
        fail(str(e))
