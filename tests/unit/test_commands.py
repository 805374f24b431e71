import subprocess

from hatchway.daemon import commands

from .typed import section

SESSION = section("session", shell=["/bin/sh"],
                  host_sftp_commands=["/usr/lib/openssh/sftp-server", "internal-sftp"],
                  subsystems={"sftp": ["/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server"]})


def test_unset_command_is_the_shell():
    assert commands.plan(None, SESSION) == ("shell", ["/bin/sh"])


def test_empty_command_is_an_exec_not_a_shell():
    assert commands.plan(b"", SESSION) == ("exec", ["/bin/sh", "-c", ""])


def test_host_sftp_command_line_maps_to_the_container_server():
    kind, argv = commands.plan(b"/usr/lib/openssh/sftp-server", SESSION)
    assert kind == "subsystem"
    assert argv[:2] == ["/bin/sh", "-c"] and "/usr/libexec/sftp-server" in argv[2]


def test_no_sftp_server_gives_one_clear_line():
    kind, argv = commands.plan(b"internal-sftp", section("session", subsystems={"sftp": ["/nope/sftp"]}))
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 127
    # on stdout, where hatchway/daemon/sftp_fallback.py finds it (sshd drops a subsystem's stderr)
    assert (p.stdout, p.stderr) == ("hatchway: this environment has no sftp server "
                                    "(tried /nope/sftp)\n", "")


def test_non_utf8_command_is_rebuilt_byte_for_byte():
    raw = b"printf '%s' '\xff\xfe\n\n'"
    kind, argv = commands.plan(raw, SESSION)
    assert kind == "exec"
    argv[2].encode("ascii")      # what travels through the Docker API is pure ASCII
    out = subprocess.run(argv, capture_output=True).stdout
    assert out == b"\xff\xfe\n\n"
