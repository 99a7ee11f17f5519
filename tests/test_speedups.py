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
SOURCES = ROOT / "src" / "seenn" / "_core" / "_speedups_src"
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
    """With the extension built and not turned off, the hot methods are compiled."""
    from seenn._instrumentation.job import TrackedJob

    compiled = accel.speedups is not None
    assert compiled == (_built() and os.environ.get(accel.DISABLE_ENV, "") in ("", "0"))
    for name in ("__enter__", "__exit__", "set_progress", "_emit"):
        assert (type(getattr(TrackedJob, name)).__name__ == "method_descriptor") == compiled
    fallbacks = ("_enter_full", "_exit_full", "_set_progress_full")
    assert all(hasattr(TrackedJob, name) for name in fallbacks) == compiled
    assert (type(seenn.Tracker.track).__name__ == "method_descriptor") == compiled
    assert hasattr(seenn.Tracker, "_track_full") == compiled


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


def test_track_makes_the_class_the_module_names_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """track()'s common call makes whatever TrackedJob the tracker module holds, as its twin."""
    from seenn._instrumentation import tracker as tracker_module

    class Special(seenn.TrackedJob):
        pass

    monkeypatch.setattr(tracker_module, "TrackedJob", Special)
    tracker = seenn.Tracker()
    for _ in range(2):  # the first checks the type, the second the user id: both cached
        tracker.track("special-type", user_id="special-user")
    from seenn._instrumentation.tracker import _checked_types, _checked_users
    assert "special-type" in _checked_types and "special-user" in _checked_users
    assert type(tracker.track("special-type", user_id="special-user")) is Special


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
    assert hook._compile(SOURCES, target) is None  # type: ignore[attr-defined]
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


def test_a_compiler_that_never_ends_is_given_up(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung compiler does not hang the install: it is stopped and the build goes on."""
    hook = _build_hook()
    real = sysconfig.get_config_var

    def hung(name: str) -> object:  # a "compiler" that waits forever
        return "sh -c 'exec tail -f /dev/null' --" if name == "LDSHARED" else real(name)

    monkeypatch.setattr(sysconfig, "get_config_var", hung)
    why = hook._compile(SOURCES, tmp_path / "x.so", timeout=0.5)  # type: ignore[attr-defined]
    assert why is not None and "took more than 0.5 s" in why


def test_a_failed_compile_says_why_and_builds_nothing(tmp_path: Path) -> None:
    """Without a working compile the build goes on (pure Python), with the reason."""
    hook = _build_hook()
    (tmp_path / "broken.c").write_text("this is not C\n")
    target = tmp_path / "broken.so"
    why = hook._compile(tmp_path, target)  # type: ignore[attr-defined]
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


# What a buggy or hostile caller does must raise, never crash the interpreter: each
# script runs in a subprocess, with the compiled hot path and without.
_HOSTILE = {
    "a processor deletes the job's token while it completes": """
        class DeleteToken(Processor):
            def on_event(self, event):
                if event.kind == "completed":
                    del seenn.current_job()._token
        try:
            with seenn.Tracker(processors=[DeleteToken()]).track("t"):
                pass
        except AttributeError:
            print("AttributeError")
    """,
    "_adopt deletes the job's tracker": """
        from seenn._instrumentation.lifecycle import JobCore
        adopt = JobCore._adopt
        def adopt_and_forget(self, parent):
            adopt(self, parent)
            del self._tracker
        JobCore._adopt = adopt_and_forget
        tracker = seenn.Tracker(processors=[Processor()])
        with tracker.track("outer"):
            try:
                with tracker.track("inner"):
                    pass
            except AttributeError:
                print("AttributeError")
    """,
    "a comparison drops the last reference to the job's last progress": """
        class Dropper:
            def __ne__(self, other):
                del job._eta_p
                return NotImplemented
            __hash__ = object.__hash__
        with seenn.Tracker(processors=[Processor()]).track("t") as job:
            job._eta_p = object()
            job._progress = Dropper()
            job._emit("progress")  # logged as an internal error: _eta_p is gone
        print("AttributeError")
    """,
    "a million jobs and events in chains are freed": """
        from seenn._core.events import _EventSlots
        from seenn._instrumentation.lifecycle import JobCore
        job_slots = JobCore.__mro__[1]
        for make, link in ((job_slots, "_user_id"), (_EventSlots, "kind")):
            last = None
            for _ in range(1_000_000):
                item = make()
                setattr(item, link, last)
                last = item
            del item, last
        print("AttributeError")  # nothing to raise: surviving is the point
    """,
}


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
@pytest.mark.parametrize("script", list(_HOSTILE), ids=list(range(len(_HOSTILE))))
def test_hostile_callers_get_errors_not_crashes(script: str, pure: bool) -> None:
    """Each case raises (or runs) as the Python twin does; the process survives it."""
    preamble = textwrap.dedent("""
        import logging
        import seenn
        logging.disable(logging.CRITICAL)
        class Processor:
            def on_event(self, event): pass
            def force_flush(self, timeout=30.0): return True
            def shutdown(self, timeout=30.0): return None
    """)
    done = _run(["-X", "dev", "-c", preamble + textwrap.dedent(_HOSTILE[script])], pure=pure)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["AttributeError"]


def test_an_interrupted_lock_wait_raises_at_once() -> None:
    """A KeyboardInterrupt while waiting for a job's lock propagates; it is not swallowed.

    The compiled set_progress once cleared the error and handed the call to
    its twin, which waited again. A lock whose acquire() raises stands in for
    the interrupted wait: it must be tried exactly once.
    """
    script = textwrap.dedent("""
        import seenn
        from seenn._core.accel import speedups
        from seenn._instrumentation import lifecycle

        class Interrupted:
            attempts = 0
            def acquire(self, *args):
                Interrupted.attempts += 1
                raise KeyboardInterrupt
            def release(self):
                pass
            def __enter__(self):
                return self.acquire()
            def __exit__(self, *exc_info):
                self.release()

        lifecycle._Lock = Interrupted
        if speedups is not None:  # the compiled path takes only locks of _Lock's type
            speedups.bind(vars(lifecycle), lifecycle.CURRENT_JOB, seenn.JobEvent)

        class Processor:
            def on_event(self, event): pass
            def force_flush(self, timeout=30.0): return True
            def shutdown(self, timeout=30.0): return None

        job = seenn.Tracker(processors=[Processor()]).track("t").__enter__()
        try:
            job.set_progress(5)
        except KeyboardInterrupt:
            print("interrupted", Interrupted.attempts, job.progress)
    """)
    for pure in (False, True):
        done = _run(["-c", script], pure=pure)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["interrupted", "1", "0"], (pure, done.stdout)


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_a_job_handed_off_while_its_block_ends_is_not_completed(pure: bool) -> None:
    """Handed off by another thread between __exit__'s check and its lock: not completed.

    The Python twin once completed such a job (falling through to _finish);
    the job belongs to the process that goes on with it.
    """
    script = textwrap.dedent("""
        import threading
        import seenn
        from seenn.exporters import SimpleProcessor
        from seenn.testing import InMemoryExporter

        class HandOffFirst:
            # The job's lock, as __exit__ meets it: another thread hands the job
            # off just before __exit__ gets the lock.
            def __init__(self, job):
                self.lock, self.job, self.fired = threading.Lock(), job, False
            def __enter__(self):
                if not self.fired:
                    self.fired = True
                    other = threading.Thread(target=self.job.hand_off)
                    other.start()
                    other.join()
                self.lock.acquire()
            def __exit__(self, *exc_info):
                self.lock.release()

        exporter = InMemoryExporter()
        with seenn.Tracker(processors=[SimpleProcessor(exporter)]).track("t") as job:
            job._lock = HandOffFirst(job)
        print(job.status, [event.kind for event in exporter.events])
    """)
    done = _run(["-c", script], pure=pure)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["running", "['started']"]


def test_the_storage_classes_take_no_arguments() -> None:
    """Like the Python twins (classes with __slots__), the storage refuses arguments."""
    from seenn._core.events import EventBuilder
    from seenn._instrumentation.lifecycle import JobCore

    for storage in (JobCore.__mro__[1], EventBuilder, seenn.TrackedJob):
        with pytest.raises(TypeError, match="takes no arguments"):
            storage(1)
