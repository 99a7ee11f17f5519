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


def cycles(graph: grimp.ImportGraph) -> set[tuple[str, str]]:
    """The direct imports (importer, imported) that close a cycle: the import leads back."""
    return {(importer, imported)
            for importer in graph.modules
            for imported in graph.find_modules_directly_imported_by(importer)
            if graph.chain_exists(importer=imported, imported=importer)}


def test_no_module_imports_another_in_a_cycle(graph: grimp.ImportGraph) -> None:
    """No two modules of seenn import each other, directly or through others."""
    assert cycles(graph) == set()


def test_the_cycle_check_finds_a_planted_cycle() -> None:
    """An upward import from the instrumentation core into the facade is found."""
    planted = grimp.build_graph("seenn")
    planted.add_import(importer="seenn._instrumentation.lifecycle", imported="seenn")
    assert ("seenn._instrumentation.lifecycle", "seenn") in cycles(planted)


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
