"""What a session runs: hatchway-shell (the ForceCommand client), hatchwayd (the
session daemon), the byte relay and the container backends.

Where to look first:
  hatchway_shell.py  the client sshd starts for every session
  daemon.py          accepts clients, forks one process per session, reaps
  session.py         one session from hello to exit status
  relay.py           where the bytes flow
  backends/docker.py where a container is created and where it dies
"""
