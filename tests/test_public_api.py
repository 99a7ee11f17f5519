"""The public surface: __all__, the command line and the package metadata."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import seenn
from seenn._cli import main


def test_all_is_sorted() -> None:
    """seenn.__all__ is sorted."""
    assert seenn.__all__ == sorted(seenn.__all__)


def test_all_lists_every_public_name() -> None:
    """Every public attribute of seenn (other than submodules) is in __all__, and exists."""
    public = {name for name, value in vars(seenn).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public | {"__version__"} == set(seenn.__all__)
    for name in seenn.__all__:
        assert hasattr(seenn, name)


def test_errors_module_lists_the_exception_tree() -> None:
    """Every error class is a SeennError and is drawn in the errors module docstring."""
    for name in seenn.errors.__all__:
        cls = getattr(seenn.errors, name)
        assert issubclass(cls, seenn.SeennError)
        assert name in (seenn.errors.__doc__ or "")


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """seenn --version prints the package version and exits 0."""
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"seenn {seenn.__version__}"


def test_python_dash_m_seenn_runs_the_cli() -> None:
    """python -m seenn --version works in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-m", "seenn", "--version"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == f"seenn {seenn.__version__}"
