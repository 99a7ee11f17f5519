"""Build the optional C extension ``seenn._core._speedups`` when a C compiler is at hand.

Hatchling runs this for wheels and editable installs. The extension is a few C
files (``src/seenn/_core/_speedups_src/``) with no dependency but Python's
headers, so they are compiled directly with the compiler and flags Python was
built with (``sysconfig``). Whatever goes
wrong (no compiler, no headers, another Python implementation), the build goes
on without it and seenn runs its pure-Python twin: the extension only makes
tracking cheaper. ``SEENN_NO_EXTENSIONS=1`` skips it.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = Path("src/seenn/_core/_speedups_src")
PACKAGE_DIR = "seenn/_core"


def _compile(sources: Path, target: Path, timeout: float = 300) -> str | None:
    """Compile the C files in ``sources`` into the module ``target``; say why not, or ``None``."""
    if platform.python_implementation() != "CPython":
        return f"{platform.python_implementation()} runs the pure-Python code"
    link = sysconfig.get_config_var("LDSHARED")
    include = sysconfig.get_paths().get("include")
    if not link or not include:
        return "this Python does not say how to build extensions"
    files = sorted(str(path) for path in sources.glob("*.c"))
    if not files:
        return f"no C files in {sources}"
    # Only PyInit__speedups is exported: the rest are the module's own names.
    command = [*shlex.split(link), "-O2", "-fPIC", "-fvisibility=hidden", f"-I{include}",
               *files, "-o", str(target)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except OSError as exc:
        return f"{command[0]}: {exc}"
    except subprocess.TimeoutExpired:
        return f"{command[0]} took more than {timeout:g} s"
    if done.returncode != 0:
        return f"{' '.join(command)} failed:\n{done.stderr.strip()}"
    return None


class SpeedupsBuildHook(BuildHookInterface):  # type: ignore[misc]
    """Compile ``_speedups_src/`` into the wheel, or beside the sources for an editable install."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("SEENN_NO_EXTENSIONS", "") not in ("", "0"):
            print("seenn: SEENN_NO_EXTENSIONS is set: not building the C extension",
                  file=sys.stderr)
            return
        name = "_speedups" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
        root = Path(self.root)
        if version == "editable":
            # The editable install imports from src/: the module goes beside its source.
            target = root / "src" / PACKAGE_DIR / name
        else:
            target = Path(tempfile.mkdtemp(prefix="seenn-build-")) / name
        why_not = _compile(root / SOURCES, target)
        if why_not is not None:
            print(f"seenn: the C extension was not built; tracking runs in pure Python "
                  f"({why_not})", file=sys.stderr)
            return
        if version != "editable":
            build_data["force_include"][str(target)] = f"{PACKAGE_DIR}/{name}"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
