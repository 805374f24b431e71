import pytest

from hatchway.core import config
def load(text):
    return config.load_text(text, "hatchway.yaml")


def test_defaults_fill_everything_not_given():
    c = load("docker:\n  image: busybox\n")
    assert c["docker"]["image"] == "busybox"
    assert c["auth"]["webhook"]["url"] == "http://127.0.0.1:8642"
    assert c["auth"]["webhook"]["timeout"] == 5.0
    assert c["session"]["shell"] == ["/bin/sh"]


def test_empty_file_is_all_defaults():
    assert load("") == config.defaults()


@pytest.mark.parametrize("text,message", [
    ("auth:\n  webhok: {}\n", "hatchway.yaml:2: auth.webhok: unknown key"),
    ("docker:\n  memory: lots\n", "hatchway.yaml:2: docker.memory: expected a size"),
    ("auth:\n  webhook:\n    timeout: soon\n",
     "hatchway.yaml:3: auth.webhook.timeout: expected a duration like 5s or 500ms, got 'soon'"),
    ("docker:\n  pull: Sometimes\n", "hatchway.yaml:2: docker.pull: expected one of"),
    ("session:\n  shell: []\n", "hatchway.yaml:2: session.shell: expected a non-empty command list"),
    ("docker:\n  read_only: 1\n", "hatchway.yaml:2: docker.read_only: expected true or false, got an integer"),
    ("auth:\n  webhook:\n    url: ftp://x\n", "hatchway.yaml:3: auth.webhook.url: expected an http:// or https:// URL"),
    ("docker: [1, 2]\n", "hatchway.yaml:1: docker: expected a mapping of keys"),
    ("docker:\n  image: a\n  image: b\n", "hatchway.yaml:3: docker.image: duplicate key"),
    ("docker:\n  image: [\n", "hatchway.yaml:3: not valid YAML"),
])
def test_errors_name_file_line_and_key(text, message):
    with pytest.raises(config.ConfigError) as e:
        load(text)
    assert str(e.value).startswith(message), str(e.value)


def test_durations_and_sizes():
    assert config.parse_duration("500ms") == 0.5
    assert config.parse_duration("2m") == 120
    assert config.parse_duration(3) == 3.0
    assert config.parse_size("512m") == 512_000_000
    assert config.parse_size("1Gi") == 1 << 30
    with pytest.raises(ValueError):
        config.parse_duration("-1s")


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(config.ConfigError, match="config file not found"):
        config.load(str(tmp_path / "nope.yaml"))


def test_shipped_example_config_is_valid(request):
    # rootpath, not __file__: pybuild runs the tests from a copy without packaging/
    c = config.load(str(request.config.rootpath / "packaging" / "hatchway.yaml"))
    assert c["docker"]["image"] == "hatchway/demo:latest"
