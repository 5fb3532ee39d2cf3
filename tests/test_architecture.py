"""The layers hold: no import runs up them and no import circle exists (scripts/import_graph.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def _import_graph() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_finds_no_import_running_up_the_layers_and_no_circle() -> None:
    graph = _import_graph()
    edges = graph.graph()
    assert graph.upward_arrows(edges) == []
    assert graph.circles(edges) == []
    arrows = graph.package_arrows(edges)
    for lower in ("access", "licensing"):
        assert not any((lower, upper) in arrows for upper in ("governance", "inference", "portal"))
    assert not any((("access", other) in arrows) for other in ("licensing", "governance", "inference", "portal"))


def test_it_would_see_an_import_running_up() -> None:
    graph = _import_graph()
    edges = {"licensing.services": {"governance.compliance.services"}, "governance.compliance.services": set()}
    assert graph.upward_arrows(edges) == [("licensing.services", "governance.compliance.services")]
    assert graph.circles({"a.x": {"a.y"}, "a.y": {"a.x"}}) == [["a.x", "a.y"]]
