"""Corral's import graph, read from the source (every import, function-local ones included).

    .venv/bin/python scripts/import_graph.py            # arrows between top-level packages, then import circles
    .venv/bin/python scripts/import_graph.py --modules  # every module-to-module arrow

Migrations and tests are left out. Exits 1 when an import runs up the layers (LAYERS) or a circle exists. A circle is a set of modules each reachable from the others (a strongly
connected component of more than one module). docs/architecture.md shows the layers this should match.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "access", "licensing", "governance", "inference", "portal")
# The layers, bottom first: a module may import its own layer and those below it. config's entry points compose
# the apps (URLs, the ASGI and WSGI applications) and sit above them all; the rest of config is the ground.
LAYERS = ("config", "access", "licensing", "governance", "inference", "portal", "entry points")
ENTRY_POINTS = {"config.asgi", "config.wsgi", "config.urls", "config.api_urls"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports, resolved to the longest known module name."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
                break
    return targets


def graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> str:
    return "entry points" if module in ENTRY_POINTS else module.split(".")[0]


def package_arrows(edges: dict[str, set[str]]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    arrows: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for source, targets in edges.items():
        for target in targets:
            a, b = layer_of(source), layer_of(target)
            if a != b:
                arrows[(a, b)].append((source, target))
    return arrows


def upward_arrows(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a layer into one above it (LAYERS), which the layering forbids."""
    return sorted(pair for (a, b), pairs in package_arrows(edges).items()
                  if LAYERS.index(b) > LAYERS.index(a) for pair in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="print every module-to-module arrow")
    args = parser.parse_args()
    edges = graph()
    if args.modules:
        for source in sorted(edges):
            for target in sorted(edges[source]):
                print(f"{source} -> {target}")
        return 0
    print("Arrows between packages (the importing module, then what it imports):")
    for (a, b), pairs in sorted(package_arrows(edges).items()):
        print(f"  {a} -> {b}: {len(pairs)}")
        for source, target in sorted(pairs)[:4]:
            print(f"      {source} -> {target}")
    upward = upward_arrows(edges)
    print(f"Arrows running up the layers ({' < '.join(LAYERS)}): {len(upward)}")
    for source, target in upward:
        print(f"  {source} -> {target}")
    found = circles(edges)
    print(f"Import circles: {len(found)}")
    for component in found:
        print("  " + ", ".join(component))
    return 1 if upward or found else 0


if __name__ == "__main__":
    sys.exit(main())
