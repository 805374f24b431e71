"""The test double for ContainerSSH's reference auth server
(tests/e2e/webhook_servers.py) keeps the quirks Hatchway must live with
(tests/data/containerssh-authconfig.json describes its API): if the double
drifted, the tests using it would
prove compatibility with a server that does not exist."""

import http.client
import json

import pytest

from tests import containerssh_schema as schema
from tests.e2e.webhook_servers import ContainerSSHServer, go_remote_address

REQ = {"remoteAddress": "192.0.2.10:51234", "connectionId": "2c97819451ac4f01be2bb0e2fc66c1fb",
       "username": "foo", "publicKey": "ssh-ed25519 AAAA"}


@pytest.fixture
def srv():
    s = ContainerSSHServer.reference()
    yield s
    s.close()


def call(srv, path, body, method="POST"):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    c.request(method, path, body if isinstance(body, bytes) else json.dumps(body).encode(),
              {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), data


def test_documented_exchange(srv):
    status, ctype, data = call(srv, "/pubkey", REQ)
    assert status == 200
    reply = json.loads(data)
    schema.check(reply, "AuthResponseBody")
    assert schema.unknown_keys(reply, "AuthResponseBody") == []
    assert reply["success"] is True and reply["authenticatedUsername"] == "foo"
    # the echo, clientVersion included although the request had none
    assert reply["remoteAddress"] == REQ["remoteAddress"]
    assert reply["connectionId"] == REQ["connectionId"]
    assert reply["clientVersion"] == ""
    # Go sniffs the type: the handler sets Content-Type too late
    assert ctype == "text/plain; charset=utf-8"


def test_routes_on_the_last_segment_and_ignores_the_method(srv):
    assert json.loads(call(srv, "/a/b/pubkey", REQ, "PUT")[2])["success"] is True
    assert call(srv, "/pubkey/", REQ) == (404, "text/plain; charset=utf-8", b"")
    assert call(srv, "/pubkeys", REQ)[0] == 404


def test_only_foo_and_busybox(srv):
    assert json.loads(call(srv, "/pubkey", dict(REQ, username="bar"))[2])["success"] is False
    assert json.loads(call(srv, "/pubkey", dict(REQ, username="busybox"))[2])["success"] is True


def test_lenient_decoding_but_500_on_garbage(srv):
    assert call(srv, "/pubkey", dict(REQ, surprise=[1]))[0] == 200
    assert call(srv, "/pubkey", b"{not json")[:3:2] == (500, b'{"error":"Internal Server Error"}')
    assert call(srv, "/pubkey", dict(REQ, remoteAddress="192.0.2.10"))[0] == 500


@pytest.mark.parametrize("given,echoed", [
    ("192.0.2.10:22", "192.0.2.10:22"), ("[2001:db8::1]:22", "[2001:db8::1]:22"),
    ("0.0.0.0:0", "0.0.0.0:0"), ("host.example:22", "<nil>:22"),
])
def test_remote_address_as_go_remarshals_it(given, echoed):
    assert go_remote_address(given) == echoed
