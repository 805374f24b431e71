"""The .deb in clean Debian 12 roots (chroot, no service may start):
install, layout, accounts, `hatchway sshd enable|disable|check`, reinstall,
remove, purge; and, in a second root, an upgrade from the previous build over
an edited config file and Docker installed after Hatchway.

The tests of a module share one root and run in file order: each step builds
on the one before, as an admin's would.
"""

from __future__ import annotations

import pytest

from .helpers import (DROPIN, MEMBER, OUTSIDER, TEMPLATE, add_users,
                      assert_dropin_applies_to_members_only, effective,
                      installed_layout_problems)
from .roots import Root, Snapshot

# What may differ between the root before the install and after the purge
# (a trailing / means the whole tree): the package database, logs, caches,
# and the accounts, which Debian keeps (and the test's own alice and carol).
EXPECTED_LEFTOVERS = (
    "/var/lib/dpkg/", "/var/lib/apt/", "/var/cache/apt/", "/var/cache/debconf/", "/var/log/",
    "/var/cache/ldconfig/", "/etc/passwd", "/etc/passwd-", "/etc/group", "/etc/group-",
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/subuid",
    "/etc/subuid-", "/etc/subgid", "/etc/subgid-", "/root/", "/run/sshd", "/home/carol/",
    "/var/mail/", "/etc/machine-id",
    # alice's home: her account stays, like every account
    "/var/lib/hatchway", "/var/lib/hatchway/homes", "/var/lib/hatchway/homes/alice",
)


@pytest.fixture(scope="module")
def fresh(deb):
    root = Root.copy("bookworm")
    try:
        root.no_services()
        root.apt_update()
        root.satisfy(deb)
        root.before = root.files()
        root.put(deb, f"/tmp/{deb.name}")
        root.apt_install(f"/tmp/{deb.name}")
        yield root
    finally:
        root.destroy()


def test_installs_cleanly(fresh):
    assert fresh.dpkg_status("hatchway") == "ii"
    assert fresh.run(["dpkg", "--verify", "hatchway"]).stdout == ""


def test_installed_layout(fresh):
    assert installed_layout_problems(fresh) == []
    conffiles = fresh.run(["dpkg-query", "-W", "-f=${Conffiles}", "hatchway"]).stdout.split()
    assert conffiles[0] == "/etc/hatchway/hatchway.yaml"


def test_accounts_and_directories(fresh):
    def passwd(name):
        return fresh.run(["getent", "passwd", name]).stdout.strip().split(":")

    for name, home in (("hatchway", "/var/lib/hatchway"), ("hatchway-keys", "/nonexistent"),
                       ("hatchway-webhook", "/var/lib/hatchway/webhook")):
        entry = passwd(name)
        assert int(entry[2]) < 1000, f"{name} is not a system user"
        assert entry[5] == home and entry[6] == "/usr/sbin/nologin", entry
    assert fresh.run(["getent", "group", "hatchway-users"]).returncode == 0
    assert "docker" not in fresh.run(["id", "-nG", "hatchway"]).stdout.split()
    stat = fresh.run(["stat", "-c", "%n %a %U %G", "/run/hatchway", "/var/cache/hatchway-keys",
                      "/var/lib/hatchway/webhook", "/var/lib/hatchway/homes"]).stdout.splitlines()
    assert stat == ["/run/hatchway 750 hatchway hatchway-users",
                    "/var/cache/hatchway-keys 700 hatchway-keys hatchway-keys",
                    "/var/lib/hatchway/webhook 750 hatchway-webhook hatchway-webhook",
                    "/var/lib/hatchway/homes 755 root root"]


def test_reinstall_is_idempotent(fresh, deb):
    accounts = fresh.sh("getent passwd; getent group").stdout
    fresh.apt_install(f"/tmp/{deb.name}", extra=["--reinstall"])
    assert fresh.dpkg_status("hatchway") == "ii"
    assert fresh.sh("getent passwd; getent group").stdout == accounts


def test_programs_run(fresh):
    """Every entry point starts under Debian's Python with Debian's modules,
    and fails with one clear line where it has nothing to talk to."""
    assert fresh.run(["hatchway", "--help"]).stdout.startswith("Usage: hatchway")
    for sub in ("check", "sshd enable", "sshd disable", "users add", "keys list",
                "sessions list", "gc", "webhook serve"):
        fresh.run(["hatchway", *sub.split(), "--help"])
    assert "usage: hatchwayd" in fresh.run(["hatchwayd", "--help"]).stdout
    keys = fresh.run(["/usr/lib/hatchway/hatchway-keys", "nobody", "ssh-ed25519",
                      "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"])
    assert keys.returncode == 0 and keys.stdout == ""     # no webhook: no key, fail closed
    shell = fresh.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                       "/usr/lib/hatchway/hatchway-shell"], check=False)
    assert shell.returncode == 255
    assert shell.stderr.startswith("hatchway: cannot reach the session daemon")
    check = fresh.run(["hatchway", "check"], check=False)
    assert check.returncode == 1 and "Traceback" not in check.stdout + check.stderr
    assert "ok   /etc/hatchway/hatchway.yaml: valid" in check.stdout


def test_sshd_enable_applies_to_members_only(fresh):
    add_users(fresh)
    out = fresh.run(["hatchway", "sshd", "enable"]).stdout
    assert f"enabled {DROPIN}" in out
    assert fresh.read(DROPIN) == fresh.read(TEMPLATE)          # OpenSSH 9.2: no %C
    assert_dropin_applies_to_members_only(fresh)
    check = fresh.run(["hatchway", "check"], check=False).stdout
    assert "ok   sshd: drop-in matches the template and is in effect for members only" in check


def test_check_reports_drift_and_enable_repairs_it(fresh):
    edited = fresh.read(DROPIN).replace("MaxSessions 10", "MaxSessions 99")
    fresh.write(DROPIN, edited)
    check = fresh.run(["hatchway", "check"], check=False)
    assert check.returncode == 1
    assert f"FAIL sshd: {DROPIN} differs from the template" in check.stdout
    assert "MaxSessions 99" in check.stdout
    out = fresh.run(["hatchway", "sshd", "enable"]).stdout
    assert "had local changes; they are saved in" in out
    assert fresh.read(DROPIN) == fresh.read(TEMPLATE)
    assert fresh.read(DROPIN + ".hatchway-saved") == edited


def test_enable_rolls_back_when_an_earlier_match_wins(fresh):
    """A Match in a file read before ours takes ForceCommand for members:
    sshd -T shows it, enable refuses and leaves the previous file as it was."""
    before = fresh.read(DROPIN)
    fresh.write("/etc/ssh/sshd_config.d/05-local.conf",
                "Match Group hatchway-users\n    ForceCommand /bin/false\n")
    try:
        p = fresh.run(["hatchway", "sshd", "enable"], check=False)
        assert p.returncode == 1
        assert "forcecommand is '/bin/false'" in p.stderr
        assert "the previous sshd configuration was put back" in p.stderr
        assert fresh.read(DROPIN) == before
        fresh.run(["hatchway", "sshd", "disable"])
        p = fresh.run(["hatchway", "sshd", "enable"], check=False)
        assert p.returncode == 1 and not fresh.exists(DROPIN)   # previous state: no file
        check = fresh.run(["hatchway", "check"], check=False).stdout
        assert f"FAIL sshd: {DROPIN} is missing" in check
    finally:
        (fresh.path / "etc/ssh/sshd_config.d/05-local.conf").unlink()
    fresh.run(["hatchway", "sshd", "enable"])


def test_enable_rolls_back_when_sshd_rejects_the_file(fresh):
    before = fresh.read(DROPIN)
    fresh.write("/tmp/bad.conf", "Match Group hatchway-users\n    Subsystem sftp internal-sftp\n")
    p = fresh.run(["hatchway", "sshd", "enable", "--template", "/tmp/bad.conf"], check=False)
    assert p.returncode == 1 and "sshd -t rejects the configuration" in p.stderr
    assert fresh.read(DROPIN) == before
    fresh.run(["install", "-d", "/run/sshd"])
    fresh.run(["sshd", "-t"])


def test_disable_and_enable_again(fresh):
    out = fresh.run(["hatchway", "sshd", "disable"]).stdout
    assert f"removed {DROPIN}" in out
    assert not fresh.exists(DROPIN)
    assert effective(fresh, MEMBER)["forcecommand"] == "none"
    assert "nothing to do" in fresh.run(["hatchway", "sshd", "disable"]).stdout
    fresh.run(["hatchway", "sshd", "enable"])
    assert_dropin_applies_to_members_only(fresh)


def test_remove_keeps_config_and_fails_closed(fresh):
    fresh.apt(["remove", "-y", "-q", "hatchway"])
    assert fresh.dpkg_status("hatchway") == "rc"
    for gone in ("/usr/bin/hatchway", "/usr/sbin/hatchwayd", "/usr/lib/hatchway/hatchway-keys",
                 "/usr/share/hatchway"):
        assert not fresh.exists(gone), gone
    assert fresh.exists("/etc/hatchway/hatchway.yaml")
    # The drop-in stays and sshd still starts with it; members' logins now
    # fail (the programs it names are gone) instead of reaching the host.
    assert fresh.exists(DROPIN)
    fresh.run(["sshd", "-t"])
    assert effective(fresh, MEMBER)["forcecommand"] == "exec /usr/lib/hatchway/hatchway-shell"
    assert effective(fresh, OUTSIDER)["forcecommand"] == "none"


def test_purge_leaves_nothing_behind(fresh):
    p = fresh.apt(["purge", "-y", "-q", "hatchway"])
    assert fresh.dpkg_status("hatchway") == "not-installed"
    assert "are now ordinary accounts" in p.stderr
    for gone in ("/etc/hatchway", DROPIN, DROPIN + ".hatchway-saved", "/var/lib/hatchway/webhook",
                 "/var/cache/hatchway-keys", "/run/hatchway"):
        assert not fresh.exists(gone), gone
    fresh.run(["sshd", "-t"])
    diff = Snapshot(fresh.before, fresh.files(), ignore=EXPECTED_LEFTOVERS)
    assert diff.added == [] and diff.removed == [] and diff.changed == []
    # the accounts stay (Debian practice); users' data is not the package's
    assert fresh.run(["getent", "passwd", "hatchway"]).returncode == 0


# ------------------------------------------------------------------ upgrade, docker later

@pytest.fixture(scope="module")
def upgraded(deb, old_deb):
    """Installed from the previous build, config edited by the admin."""
    root = Root.copy("bookworm")
    try:
        root.no_services()
        root.apt_update()
        root.satisfy(deb)
        for d in (deb, old_deb):
            root.put(d, f"/tmp/{d.name}")
        root.apt_install(f"/tmp/{old_deb.name}")
        yield root
    finally:
        root.destroy()


def test_upgrade_keeps_the_edited_config(upgraded, deb, old_deb):
    conf = "/etc/hatchway/hatchway.yaml"
    assert "previous release" in upgraded.read(conf)
    edited = upgraded.read(conf) + "# a local edit\n"
    upgraded.write(conf, edited)
    # non-interactive, as unattended upgrades run: no prompt, the edit wins
    upgraded.apt_install(f"/tmp/{deb.name}")
    assert upgraded.dpkg_status("hatchway") == "ii"
    version = upgraded.run(["dpkg-query", "-W", "-f=${Version}", "hatchway"]).stdout
    assert version == deb.name.split("_")[1]
    assert upgraded.read(conf) == edited
    shipped = upgraded.read(conf + ".dpkg-dist")
    assert "previous release" not in shipped and "# a local edit" not in shipped
    assert installed_layout_problems(upgraded) == []
    assert upgraded.run(["hatchway", "check"], check=False).stdout.startswith(
        f"ok   {conf}: valid")


def test_docker_installed_later_gets_the_daemon_into_its_group(upgraded):
    assert upgraded.run(["getent", "group", "docker"], check=False).returncode != 0
    p = upgraded.apt_install("docker.io")
    assert "Processing triggers for hatchway" in p.stdout
    assert "docker" in upgraded.run(["id", "-nG", "hatchway"]).stdout.split()
    assert upgraded.dpkg_status("hatchway") == "ii"
