"""Every Python block in README.md and docs/ runs as written, against a real embedded backend.

The convention, for whoever writes docs:

* A ```` ```python ```` block is a complete program. This test runs each one in
  a fresh interpreter (its own working directory, a temporary one) and expects
  exit status 0 and no traceback or ``seenn`` warning on stderr.
* The docs write the backend the way ``seenn serve`` prints it: base URL
  ``http://127.0.0.1:8080`` and placeholder keys ``sk_test_...`` /
  ``sk_live_...`` (secret) and ``pk_test_...`` / ``pk_live_...`` (public). The
  test serves a real backend (``seenn.server.running``) and puts its URL and
  keys in place of exactly those strings; ``SEENN_API_KEY`` and
  ``SEENN_BASE_URL`` name it too, for blocks that read the environment.
* A block that is only a piece of a program (a signature, one line of a larger
  setup, a queue worker that needs a broker) carries the marker
  ``<!-- fragment: why -->`` on the line before its fence. It is not run, but
  it must still parse, and the reason may not be empty.
* A block that is a pytest test module carries ``<!-- run: pytest -->`` and is
  run with ``python -m pytest`` (its tests must pass).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import seenn.server
from seenn.server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>[\w-]+)\s*:\s*(?P<value>.*?)\s*-->\s*$")
KINDS = {"fragment", "run"}


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page, with the marker before it (if any)."""

    page: Path
    line: int
    code: str
    marker: str | None
    value: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if opening["lang"] == "python":
            indent = len(opening["indent"])
            code = "\n".join(line[indent:] for line in lines[index + 1:end]) + "\n"
            before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = MARKER.match(before)
            yield Block(page, index + 1, code, marker["kind"] if marker else None,
                        marker["value"] if marker else "")
        index = end + 1


BLOCKS = [block for page in PAGES for block in _blocks(page)]
RUNNABLE = [block for block in BLOCKS if block.marker != "fragment"]
FRAGMENTS = [block for block in BLOCKS if block.marker == "fragment"]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One embedded backend for every block of the module."""
    with seenn.server.running(str(tmp_path_factory.mktemp("docs") / "docs.db")) as running:
        yield running


def _as_written_for(code: str, backend: RunningServer) -> str:
    """The block with the docs' placeholder URL and keys replaced by the backend's."""
    code = code.replace("http://127.0.0.1:8080", backend.url)
    for placeholder in ("sk_test_...", "sk_live_..."):
        code = code.replace(placeholder, backend.api_key)
    for placeholder in ("pk_test_...", "pk_live_..."):
        code = code.replace(placeholder, backend.public_key or "")
    return code


def _env(backend: RunningServer) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("SEENN_", "OTEL_", "PYTEST_"))}
    env.update(SEENN_API_KEY=backend.api_key, SEENN_BASE_URL=backend.url,
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def test_the_pages_have_python_blocks() -> None:
    """The collector finds the blocks (a broken pattern would pass everything vacuously)."""
    assert len(BLOCKS) >= 30
    assert {block.page.name for block in BLOCKS} >= {"README.md", "tracking.md", "client.md"}


def test_markers_are_known_and_say_why() -> None:
    """Every marker before a Python block is a known one, and a fragment says why."""
    for block in BLOCKS:
        if block.marker is None:
            continue
        assert block.marker in KINDS, f"{block.id}: unknown marker {block.marker!r}"
        if block.marker == "fragment":
            assert block.value, f"{block.id}: a fragment marker needs a reason"
        else:
            assert block.value == "pytest", f"{block.id}: unknown runner {block.value!r}"


@pytest.mark.parametrize("block", FRAGMENTS, ids=[block.id for block in FRAGMENTS])
def test_fragments_parse(block: Block) -> None:
    """A block marked as a fragment is still valid Python (top-level await allowed)."""
    compile(block.code, block.id, "exec",
            flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_block_runs(block: Block, backend: RunningServer, tmp_path: Path) -> None:
    """The block runs as written (against the embedded backend) and ends without an error."""
    script = tmp_path / ("test_block.py" if block.marker == "run" else "block.py")
    script.write_text(_as_written_for(block.code, backend), encoding="utf-8")
    command = [sys.executable, str(script)]
    if block.marker == "run":
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    out = subprocess.run(command, cwd=tmp_path, env=_env(backend), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"{block.id}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, f"{block.id}\n{out.stderr}"
    warnings = [line for line in out.stderr.splitlines() if line.startswith("seenn:")]
    assert not warnings, f"{block.id}: seenn logged\n" + "\n".join(warnings)


def test_readme_links_resolve() -> None:
    """Every relative link of README.md names a file or folder of the repository.

    (The pages of docs/ are checked by `mkdocs build --strict`; the README is not part
    of the site.)
    """
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text)
    assert targets
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert not missing
