"""The key helper's parsed copy of its config (hatchway/keys/compiled_config.py):
used only while the YAML and the schema are byte-for-byte what it was made
from, never made from a broken config, never kept in a directory others can
enter.  The end-to-end effect (no PyYAML import on a warm call) is in
test_akc.py."""

import json
import os

import pytest

from hatchway.keys import compiled_config
from hatchway.core import config
YAML = "auth:\n  webhook:\n    url: http://127.0.0.1:1/\n    timeout: 1s\n"


@pytest.fixture
def state(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return str(d)


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "hatchway.yaml"
    p.write_text(YAML)
    return p


def test_parsed_once_then_read_back(cfg, state):
    first, cached = compiled_config.load_auth(str(cfg), state)
    assert not cached
    again, cached = compiled_config.load_auth(str(cfg), state)
    assert cached
    assert again == first
    assert first["webhook"]["timeout"] == 1.0
    assert first["webhook"]["url"] == "http://127.0.0.1:1"
    # the defaults of keys the file leaves out are there too
    assert first == config.load(str(cfg))["auth"]
    assert os.stat(os.path.join(state, "config.json")).st_mode & 0o077 == 0


def test_any_change_to_the_file_is_seen_at_once(cfg, state):
    compiled_config.load_auth(str(cfg), state)
    # same size, same second: only the bytes tell
    cfg.write_text(YAML.replace("1s", "2s"))
    auth, cached = compiled_config.load_auth(str(cfg), state)
    assert not cached
    assert auth["webhook"]["timeout"] == 2.0


def test_another_config_file_is_not_served_the_copy(cfg, state, tmp_path):
    compiled_config.load_auth(str(cfg), state)
    other = tmp_path / "other.yaml"
    other.write_text(YAML)
    assert compiled_config.load_auth(str(other), state)[1] is False


def test_a_new_schema_reparses(cfg, state, monkeypatch):
    compiled_config.load_auth(str(cfg), state)
    # (a package upgrade replaces config.py: another inode and mtime)
    monkeypatch.setattr(compiled_config, "_schema_id", lambda: [0, 0, 0])
    assert compiled_config.load_auth(str(cfg), state)[1] is False


def test_a_broken_config_is_never_stored(cfg, state):
    cfg.write_text("auth:\n  webhook:\n    timeout: soon\n")
    for _ in range(2):
        with pytest.raises(config.ConfigError, match="auth.webhook.timeout"):
            compiled_config.load_auth(str(cfg), state)
    assert os.listdir(state) == []


def test_broken_after_good_is_refused_not_served_stale(cfg, state):
    compiled_config.load_auth(str(cfg), state)
    cfg.write_text("auth: [")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        compiled_config.load_auth(str(cfg), state)


def test_missing_config(tmp_path, state):
    with pytest.raises(config.ConfigError, match="not found"):
        compiled_config.load_auth(str(tmp_path / "nope.yaml"), state)


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711])
def test_no_copy_in_a_directory_others_can_enter(cfg, state, mode):
    os.chmod(state, mode)
    compiled_config.load_auth(str(cfg), state)
    assert os.listdir(state) == []
    assert compiled_config.load_auth(str(cfg), state)[1] is False


def test_no_copy_without_the_directory(cfg, tmp_path):
    missing = str(tmp_path / "missing")
    assert compiled_config.load_auth(str(cfg), missing)[1] is False
    assert not os.path.exists(missing)


@pytest.mark.parametrize("garbage", ["", "{", "[]", '{"tag": 1, "auth": {}}'])
def test_a_corrupt_copy_is_ignored_and_replaced(cfg, state, garbage):
    good, _ = compiled_config.load_auth(str(cfg), state)
    path = os.path.join(state, "config.json")
    with open(path, "w") as f:
        f.write(garbage)
    assert compiled_config.load_auth(str(cfg), state) == (good, False)
    assert json.load(open(path))["auth"] == good


def test_the_fast_path_knows_the_schemas_files_and_default():
    """Every module the schema is made of is among the files whose change
    makes the helper parse the YAML again."""
    import sys

    from hatchway.backends import registry
    config.schema()
    made_of = {os.path.abspath(config.__file__), os.path.abspath(registry.__file__)}
    made_of |= {os.path.abspath(sys.modules[registry.BACKENDS[n] + ".settings"].__file__)
                for n in registry.BACKENDS}
    assert made_of == set(compiled_config.schema_files())
    assert compiled_config.CONFIG_PATH == config.DEFAULT_PATH


def test_the_fast_sha256_is_sha256():
    import hashlib

    from hatchway.core import digest
    for data in (b"", b"abc", bytes(range(256)) * 100):
        assert digest.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        assert digest.sha256(data).digest() == hashlib.sha256(data).digest()
