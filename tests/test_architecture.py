"""The import rules of docs/architecture.md, checked on the real import graph.

``lint-imports`` (run by ``.ci/run``) enforces the layers; these tests add what
its contracts cannot say: no cycle between any two modules (the root package
included), and only the CLI leans on the facade.
"""

from __future__ import annotations

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The import graph of ``seenn``, type-checking imports included."""
    return grimp.build_graph("seenn")


def cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_no_module_imports_another_in_a_cycle(graph: grimp.ImportGraph) -> None:
    """No two modules of seenn import each other, directly or through others."""
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_planted_cycle() -> None:
    """An upward import from the instrumentation core into the facade is found."""
    planted = grimp.build_graph("seenn")
    planted.add_import(importer="seenn._instrumentation.lifecycle", imported="seenn")
    assert any({"seenn", "seenn._instrumentation.lifecycle"} <= component
               for component in cycles(planted))


def test_only_the_cli_imports_the_facade(graph: grimp.ImportGraph) -> None:
    """Below the top, modules reach the default tracker through instrumentation, not ``seenn``."""
    importers = graph.find_modules_that_directly_import("seenn")
    assert {m for m in importers if not m.startswith("seenn._cli")} == set()


@pytest.mark.parametrize(("source", "forbidden"), [
    ("seenn._instrumentation", "seenn.exporters"),
    ("seenn._instrumentation", "seenn._client"),
    ("seenn._instrumentation", "seenn.server"),
    ("seenn._instrumentation", "seenn.propagation"),
    ("seenn.exporters", "seenn._instrumentation"),
    ("seenn.server", "seenn._instrumentation"),
    ("seenn.server", "seenn.exporters"),
    ("seenn.server", "seenn._client"),
    ("seenn._client", "seenn.server"),
    ("seenn._core", "seenn._instrumentation"),
])
def test_dependencies_point_one_way(graph: grimp.ImportGraph, source: str,
                                    forbidden: str) -> None:
    """A concern never imports one it must stay independent of, even indirectly."""
    assert not graph.chain_exists(importer=source, imported=forbidden, as_packages=True)
