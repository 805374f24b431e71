"""hatchway.core.http11.URL splits the URLs Hatchway connects to exactly as
urllib.parse.urlsplit does (http11 avoids importing urllib for start-up time),
and refuses what urlsplit would refuse."""

from urllib.parse import urlsplit

import pytest

from hatchway.core.http11 import URL, HTTPError, _literal


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8642", "http://127.0.0.1:8642/", "http://127.0.0.1:8642/auth/v1/pubkey",
    "https://Auth.Example.COM/pubkey", "https://auth.example:443", "http://[::1]:8642/x",
    "https://[2001:DB8::1]/", "http://[::1]", "http://user:pw@host.example:81/p",
    "unix:///var/run/docker.sock", "tcp://10.0.0.5:2376", "tcp://docker.example:2376",
    "HTTP://host", "http://host:", "http://host/a:b/c",
])
def test_like_urlsplit(url):
    want, got = urlsplit(url), URL(url)
    assert (got.scheme, got.netloc, got.hostname or None, got.port) == \
        (want.scheme, want.netloc, want.hostname, want.port)
    assert got.path == want.path


@pytest.mark.parametrize("url", ["http://host:99999", "http://host:8o", "http://[::1:80",
                                 "http://[::1]x:80", "no-scheme", "http://host:-1"])
def test_refused(url):
    with pytest.raises(HTTPError):
        URL(url)


def test_ip_literals_need_no_lookup():
    assert _literal("127.0.0.1", 80)[0][4] == ("127.0.0.1", 80)
    assert _literal("::1", 80)[0][4] == ("::1", 80, 0, 0)
    assert _literal("localhost", 80) is None
    assert _literal("999.1.1.1", 80) is None
