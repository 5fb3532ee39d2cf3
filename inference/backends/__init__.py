"""Provisioner backends behind one narrow interface (base.Backend): local processes, Kubernetes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference.backends.base import Backend


def backend_for(name: str) -> Backend:
    """The backend a node names. A new backend (Ray Serve, KServe) is a module and a line here; the
    reconciler only ever sees the Backend interface."""
    if name == "kubernetes":
        from inference.backends.kubernetes import KubernetesBackend

        return KubernetesBackend()
    if name == "local":
        from inference.backends.local import LocalBackend

        return LocalBackend()
    raise ValueError(f"Unknown inference backend {name!r}")
