"""Container backends behind one interface (base.py)."""

from __future__ import annotations


def make(cfg: dict):
    """The backend the config asks for."""
    if cfg["backend"] == "kubernetes":
        from .kubernetes.backend import KubernetesBackend
        return KubernetesBackend(cfg)
    from .docker.backend import DockerBackend
    return DockerBackend(cfg)
