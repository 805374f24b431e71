"""Fixtures shared by more than one suite.  Only stdlib and pytest at import
time: the package build runs tests/unit with this file loaded."""

import os

import pytest


@pytest.fixture(scope="session")
def cluster():
    """The real Kubernetes test cluster (tests/k8s_cluster.py): up once per
    pytest session for every suite that asks, down at its end.  Yields the
    admin kubeconfig's path."""
    if os.geteuid() != 0:
        pytest.exit("the Kubernetes tests need root", returncode=2)
    from tests import k8s_cluster
    try:
        with k8s_cluster.running() as kubeconfig:
            yield kubeconfig
    except k8s_cluster.ClusterError as e:
        pytest.fail(str(e), pytrace=False)
