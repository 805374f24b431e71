"""`hatchway`: the admin command.  One module per command group:

  users_cmd     users add|remove|list|passwd     (host account + webhook entry)
  keys_cmd      keys add|list|remove             (the bundled webhook's store)
  webhook_cmd   webhook serve|token              (the bundled webhook)
  sessions_cmd  sessions list|kill, gc           (through the configured backend)
  workspaces_cmd workspaces list|stop|rm         (connection and persistent modes)
  sshd_cmd      sshd enable|disable              (the drop-in)
  check_cmd     check                            (config and environment)
"""

from __future__ import annotations

import click

from . import check_cmd, keys_cmd, sessions_cmd, sshd_cmd, users_cmd, webhook_cmd, workspaces_cmd


@click.group()
def cli():
    """Hatchway: every SSH login in its own container."""


for command in (users_cmd.users, keys_cmd.keys, webhook_cmd.webhook, sessions_cmd.sessions,
                sessions_cmd.gc, workspaces_cmd.workspaces, sshd_cmd.sshd, check_cmd.check):
    cli.add_command(command)


def main() -> int:
    # click's own usage errors, in the same one-line form as every other error
    try:
        cli.main(prog_name="hatchway", standalone_mode=False)
    except click.ClickException as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) else ""
        click.echo(f"hatchway: {e.format_message()}{hint}", err=True)
        return e.exit_code
    except click.Abort:
        click.echo("hatchway: aborted", err=True)
        return 1
    return 0
