"""Fixtures for the end-to-end suite: one real stack per test session.

Needs root and the installed .deb (`make test` does both).  After every test
the leak check waits briefly for that test's session containers to be gone:
a container left behind fails the test that left it.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .backends import BACKENDS, EXTERNAL, OnBackend, k8s_config
from .stack import Stack


def pytest_configure(config):
    config.addinivalue_line("markers", "config(overrides): run the test with these config overrides")
    config.addinivalue_line("markers", "workspace_mode(mode, **workspace): a Kubernetes "
                            "workspace test's mode and workspace settings")
    config.addinivalue_line("markers", "fwd(session): a Kubernetes port forwarding test's "
                            "`session` settings")


@pytest.fixture(scope="session")
def stack():
    if os.geteuid() != 0:
        pytest.exit("the end-to-end suite needs root (run `make test`)", returncode=2)
    if not os.path.exists("/usr/sbin/hatchwayd"):
        pytest.exit("hatchway is not installed (run `make test`)", returncode=2)
    tmp = Path(tempfile.mkdtemp(prefix="hatchway-e2e-"))
    s = Stack(tmp)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        if os.environ.get("HATCHWAY_KEEP_LOGS"):
            print(f"\nlogs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def hw(stack, request):
    """The stack, configured for this test (marker `config`), leak-checked after it."""
    marker = request.node.get_closest_marker("config")
    stack.reconfigure(marker.args[0] if marker else None)
    yield stack
    stack.wait_no_containers(timeout=15)


@pytest.fixture(scope="session")
def k8s(request):
    """The Kubernetes cluster of the Kubernetes tests: the session's test
    cluster (tests/conftest.py), or HATCHWAY_E2E_KUBECONFIG's."""
    if EXTERNAL:
        return {"kubeconfig": EXTERNAL, "external": True}
    return {"kubeconfig": request.getfixturevalue("cluster"), "external": False}


@pytest.fixture(scope="module", params=BACKENDS)
def backend_name(request):
    # module scope: pytest runs a module's tests for one backend, then the other
    return request.param


@pytest.fixture
def hwb(stack, backend_name, request):
    """The stack on each backend in turn (an OnBackend), leak-checked after the test."""
    if backend_name == "docker":
        stack.reconfigure(None)
        on = OnBackend(stack, "docker")
    else:
        cluster = request.getfixturevalue("k8s")
        stack.reconfigure(k8s_config(cluster, stack.tmp))
        on = OnBackend(stack, "kubernetes", cluster)
    yield on
    on.wait_no_sessions(timeout=15 if backend_name == "docker" else 30)


@pytest.fixture(autouse=True)
def _show_logs_on_failure(request, stack):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print("---- hatchwayd log (tail) ----")
        print(stack.daemon_log()[-3000:])
        print("---- sshd log (tail) ----")
        print((stack.tmp / "sshd.log").read_text(errors="replace")[-2000:])


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
