"""The compiled hot path (``seenn._core._speedups``) and its pure-Python twin agree.

The rest of the suite runs with whichever the install has (the compiled one
where a C compiler was at hand, as in CI). These tests run the other one too:
the tracking test files with ``SEENN_NO_EXTENSIONS=1``, and a set of scenarios
both ways, compared event by event.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap
import weakref
import zipfile
from pathlib import Path

import pytest

import seenn
from seenn._core import accel
from seenn.exporters import SimpleProcessor
from seenn.testing import InMemoryExporter

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "seenn" / "_core" / "_speedups.c"
TRACKING_TESTS = ["test_track.py", "test_processors.py", "test_job_states.py",
                  "test_job_decorator.py", "test_eta_local.py", "test_stage_message.py",
                  "test_otel.py", "test_testing.py", "test_propagation.py"]


def _run(args: list[str], *, pure: bool, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(accel.DISABLE_ENV, None)
    if pure:
        env[accel.DISABLE_ENV] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _built() -> bool:
    """Whether this install has the extension (whatever the environment of this run says)."""
    done = _run(["-c", "from seenn._core.accel import speedups; print(speedups is not None)"],
                pure=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_the_compiled_hot_path_answers_when_built() -> None:
    """With the extension built and not turned off, TrackedJob's hot methods are compiled."""
    from seenn._instrumentation.job import TrackedJob

    compiled = accel.speedups is not None
    assert compiled == (_built() and os.environ.get(accel.DISABLE_ENV, "") in ("", "0"))
    for name in ("__enter__", "__exit__", "set_progress", "_emit"):
        assert (type(getattr(TrackedJob, name)).__name__ == "method_descriptor") == compiled
    fallbacks = ("_enter_full", "_exit_full", "_set_progress_full")
    assert all(hasattr(TrackedJob, name) for name in fallbacks) == compiled


def test_the_environment_variable_turns_it_off() -> None:
    """SEENN_NO_EXTENSIONS=1 runs the Python twins: plain functions, nothing compiled."""
    script = textwrap.dedent("""
        import types
        from seenn._core.accel import speedups
        from seenn._instrumentation.job import TrackedJob
        assert speedups is None
        assert isinstance(TrackedJob.__dict__["set_progress"], types.FunctionType)
        assert type(TrackedJob.__enter__) is types.FunctionType
        print("pure")
    """)
    done = _run(["-c", script], pure=True)
    assert done.returncode == 0 and done.stdout.strip() == "pure", done.stderr


def test_a_build_of_another_version_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale build beside the source (another API_VERSION) is ignored, not half-used."""
    monkeypatch.delenv(accel.DISABLE_ENV, raising=False)
    assert (accel._load() is not None) == _built()
    monkeypatch.setattr(accel, "API_VERSION", accel.API_VERSION + 1)
    assert accel._load() is None


def test_both_hot_paths_tell_the_same_story() -> None:
    """The same scenarios, compiled and pure, give the same events and log lines."""
    compiled = _run(["tests/speedups_parity.py"], pure=False)
    pure = _run(["tests/speedups_parity.py"], pure=True)
    assert compiled.returncode == 0, compiled.stderr
    assert pure.returncode == 0, pure.stderr
    assert f'"compiled": {str(_built()).lower()}' in compiled.stderr
    assert '"compiled": false' in pure.stderr
    assert compiled.stdout.count('"kind"') > 100  # the scenarios ran and exported events
    assert compiled.stdout.splitlines() == pure.stdout.splitlines()


def test_the_pure_python_twin_passes_the_tracking_tests() -> None:
    """The tracking test files pass with SEENN_NO_EXTENSIONS=1 as they do compiled."""
    done = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                 *(f"tests/{name}" for name in TRACKING_TESTS)], pure=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


def test_jobs_and_events_in_a_cycle_are_collected() -> None:
    """A finished job in a reference cycle through its own fields, and its events, are freed."""
    exporter = InMemoryExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    with tracker.track("gc-cycle-probe") as job:
        job.set_progress(5)
    job._result = [job]  # a cycle through a field the compiled JobSlots holds
    job._metadata = {"event": exporter.events[0], "job": job}
    job_ref = weakref.ref(job)
    del job
    exporter.clear()
    gc.collect()
    assert job_ref() is None
    assert not [o for o in gc.get_objects() if type(o) is seenn.JobEvent
                and o.job_type == "gc-cycle-probe"]


def _build_hook() -> object:
    spec = importlib.util.spec_from_file_location("seenn_hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_compiles_the_extension(tmp_path: Path) -> None:
    """hatch_build.py's compiler call makes a module that imports and runs a job."""
    hook = _build_hook()
    target = tmp_path / ("_speedups" + sysconfig.get_config_var("EXT_SUFFIX"))
    assert hook._compile(SOURCE, target) is None  # type: ignore[attr-defined]
    script = textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("seenn._core._speedups", {str(target)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(module.API_VERSION, len(module.EVENT_FIELDS))
    """)
    done = _run(["-c", script], pure=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(accel.API_VERSION), "20"]


def test_a_failed_compile_says_why_and_builds_nothing(tmp_path: Path) -> None:
    """Without a working compile the build goes on (pure Python), with the reason."""
    hook = _build_hook()
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    target = tmp_path / "broken.so"
    why = hook._compile(broken, target)  # type: ignore[attr-defined]
    assert why is not None and "failed" in why
    assert not target.exists()


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "SEENN_NO_EXTENSIONS"])
def test_a_wheel_carries_the_extension_unless_told_not_to(tmp_path: Path, pure: bool) -> None:
    """A wheel holds the built module under a platform tag; with the variable, a pure wheel."""
    done = _run(["-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                 "--wheel-dir", str(tmp_path), str(ROOT)], pure=pure)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("seenn-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        built = [name for name in archive.namelist()
                 if name.startswith("seenn/_core/_speedups") and name.endswith(".so")]
    if pure or not _built():  # told not to, or no compiler here
        assert built == [] and wheel.name.endswith("-py3-none-any.whl")
    else:
        assert built == ["seenn/_core/_speedups" + sysconfig.get_config_var("EXT_SUFFIX")]
        assert not wheel.name.endswith("-none-any.whl")
