"""Outboxes shared by many processes: a directory, a file in use, adoption of ended processes."""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import seenn
import seenn.server
from seenn.exporters import HTTPExporter
from seenn.exporters._http import family as family_module
from seenn.exporters._http import outbox as outbox_module
from tests.faults import free_port
from tests.outbox_worker import KEY, adopt, hold, lifecycle
from tests.server import RecordingServer

IN_DIRECTORY = re.compile(r"seenn-outbox-[A-Za-z0-9_.-]+-(\d+)-[0-9a-f]{8}\.sqlite")


def closed_url() -> str:
    """A loopback URL nothing listens on: every call fails, every event stays in the outbox."""
    return f"http://127.0.0.1:{free_port()}"


def exporter_on(setting: Any, url: str | None = None, **options: Any) -> HTTPExporter:
    """An exporter on ``setting``: to ``url`` with retries that do not wait, else to nowhere."""
    exporter = HTTPExporter(api_key=KEY, base_url=url or closed_url(), outbox=setting,
                            **options)
    if url is not None:
        exporter._random = lambda: 0.0
    return exporter


def leave_dead_file(setting: Path | str, jobs: list[str]) -> str:
    """An outbox file of ``setting`` holding ``jobs`` whose owner has ended; its path."""
    exporter = exporter_on(setting)
    for job_id in jobs:
        exporter.export(lifecycle(job_id))
    path = exporter._outbox_path
    assert path is not None
    exporter.shutdown(timeout=0.1)
    return path


def rows(path: str | Path) -> list[tuple[str, int]]:
    """The (job id, sequence) rows of the outbox at ``path``, sorted."""
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT job_id, seq FROM events"))


def rows_of(job_id: str) -> list[tuple[str, int]]:
    """The rows of one lifecycle of ``job_id``."""
    return [(job_id, 0), (job_id, 1), (job_id, 2)]


def outbox_files(directory: Path) -> list[str]:
    """The names of the per-process outbox databases in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if IN_DIRECTORY.fullmatch(p.name))


def keys_sent(server: RecordingServer) -> list[str]:
    """The idempotency keys of the calls the server received, in order."""
    return [r.headers["Idempotency-Key"] for r in server.requests if r.method == "POST"]


def expected_keys(jobs: list[str]) -> list[str]:
    """The keys of one lifecycle per job."""
    return sorted(f"{job}.{seq}" for job in jobs for seq in range(3))


FRESH = "SEENN_TEST_FRESH_PROCESS"
_T = TypeVar("_T", bound=Callable[..., None])


def in_a_fresh_process(test: _T) -> _T:
    """Run a forking test in a new interpreter (a pytest of its own).

    ``fork()`` copies a process with only the forking thread: a mutex another
    thread held at that moment (SQLite's own, held by a thread some earlier
    test left running) stays held in the child forever. The test suite's
    process collects such threads; a fresh one holds only the test's own.
    """
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        if os.environ.get(FRESH) == test.__name__:
            test(*args, **kwargs)
            return
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{Path(__file__).resolve()}::{test.__name__}"],
            env={**os.environ, FRESH: test.__name__}, capture_output=True, text=True,
            timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    return run  # type: ignore[return-value]


@pytest.fixture
def spawn() -> Any:
    """The spawn start method: a fresh interpreter, as uvicorn workers are."""
    return multiprocessing.get_context("spawn")


@pytest.fixture
def forking() -> Iterator[Any]:
    """The fork start method, as Celery's prefork pool and gunicorn use it."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a threaded process; forking one is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        yield multiprocessing.get_context("fork")


# -- many processes, one setting -------------------------------------------------------------


def test_processes_sharing_a_directory_each_get_their_own_file(tmp_path: Path,
                                                               spawn: Any) -> None:
    """Two processes given one directory both start, each with its own private file in it."""
    directory = tmp_path / "spool"
    results, stop = spawn.Queue(), spawn.Event()
    url = closed_url()
    workers = [spawn.Process(target=hold, args=(f"{directory}/", url, [], results, stop))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        first, second = results.get(timeout=120), results.get(timeout=120)
        assert {first["pid"], second["pid"]} == {w.pid for w in workers}
        assert first["path"] != second["path"]
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for report in (first, second):
            name = Path(report["path"]).name
            match = IN_DIRECTORY.fullmatch(name)
            assert Path(report["path"]).parent == directory and match is not None
            assert int(match.group(1)) == report["pid"]
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
            assert stat.S_IMODE((directory / (name + ".lock")).stat().st_mode) == 0o600
            assert report["lines"] == []  # nothing to warn about
        assert len(outbox_files(directory)) == 2
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert list(directory.iterdir()) == []  # ended with nothing pending: their files went


def test_processes_sharing_a_file_path_both_start_one_beside_it(tmp_path: Path,
                                                                spawn: Any) -> None:
    """A file path in use by a live process: the next one starts on a file beside it, warned."""
    path = tmp_path / "outbox.db"
    results, stop = spawn.Queue(), spawn.Event()
    url = closed_url()
    holder = spawn.Process(target=hold, args=(str(path), url, ["job_a"], results, stop))
    second_worker = spawn.Process(target=hold, args=(str(path), url, ["job_b"], results, stop))
    holder.start()
    try:
        first = results.get(timeout=120)
        second_worker.start()
        second = results.get(timeout=120)
        assert first["path"] == str(path) and first["lines"] == []
        assert re.fullmatch(re.escape(str(path)) + rf"\.{second['pid']}-[0-9a-f]{{8}}",
                            second["path"])
        (line,) = second["lines"]
        assert line.startswith("WARNING") and "in use by another process" in line
        assert "give outbox a directory" in line and second["path"] in line
        assert (first["count"], second["count"]) == (3, 3)  # each keeps its own events
    finally:
        stop.set()
    holder.join(60)
    second_worker.join(60)
    assert (holder.exitcode, second_worker.exitcode) == (0, 0)
    assert (results.get(timeout=60), results.get(timeout=60)) == (3, 3)
    assert rows(path) == rows_of("job_a")
    assert rows(second["path"]) == rows_of("job_b")


# -- adoption: exactly once ------------------------------------------------------------------

CRASHING = textwrap.dedent("""
    import sys
    import seenn
    from seenn.exporters import HTTPExporter, SimpleProcessor

    url, setting = sys.argv[1:3]
    exporter = HTTPExporter(api_key="sk_test_outbox-family", base_url=url, outbox=setting)
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    with tracker.track("crash", user_id="u1", title="Crashing") as job:
        job.set_progress(50, message="half way")
        job.set_result({"type": "video", "url": "https://cdn/crash.mp4"})
    print(job.id, exporter._outbox_path, flush=True)
    sys.stdin.read()  # until killed
""")


def run_until_killed(setting: Path | str) -> tuple[str, str]:
    """Track one job in a process whose backend is down, then SIGKILL it: (job id, its file)."""
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING, closed_url(), str(setting)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "SEENN_EXPORTER": "none"})
    assert process.stdout is not None
    job_id, path = process.stdout.readline().split()
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL
    return job_id, path


def test_a_killed_process_is_replayed_by_a_later_one_exactly_once(
        tmp_path: Path, server: RecordingServer) -> None:
    """A process SIGKILLed with its job undelivered: the next one sends each event once."""
    directory = tmp_path / "spool"
    job_id, dead = run_until_killed(f"{directory}/")
    assert rows(dead) == rows_of(job_id)
    later = exporter_on(directory, server.url)
    assert later.stats.replayed == 3
    assert later.force_flush(30)
    assert sorted(keys_sent(server)) == [f"{job_id}.0", f"{job_id}.1", f"{job_id}.2"]
    job = server.backend.jobs[job_id]
    assert (job["status"], job["progress"], job["result"]["url"]) == (
        "completed", 100, "https://cdn/crash.mp4")
    for suffix in ("", "-wal", "-shm", ".lock"):
        assert not os.path.exists(dead + suffix)
    again = exporter_on(directory, server.url)
    assert again.stats.replayed == 0
    again.shutdown(timeout=5)
    later.shutdown(timeout=5)
    assert list(directory.iterdir()) == []


@in_a_fresh_process
def test_two_processes_starting_at_once_adopt_a_dead_file_once(
        tmp_path: Path, server: RecordingServer, forking: Any) -> None:
    """Two processes racing for one dead file: one adopts it, the backend sees each event once."""
    for attempt in range(4):
        directory = tmp_path / f"race{attempt}"
        jobs = [f"job_race{attempt}_{n}" for n in range(3)]
        dead = leave_dead_file(f"{directory}/", jobs)
        barrier, results = forking.Barrier(2), forking.Queue()
        racers = [forking.Process(target=adopt, args=(str(directory), server.url, barrier,
                                                      results)) for _ in range(2)]
        for racer in racers:
            racer.start()
        reports = [results.get(timeout=120) for _ in racers]
        for racer in racers:
            racer.join(60)
        assert sorted(r["replayed"] for r in reports) == [0, 9], attempt
        assert all(r["flushed"] for r in reports)
        assert not os.path.exists(dead)
        assert list(directory.iterdir()) == []
    sent = keys_sent(server)
    assert sorted(sent) == expected_keys([f"job_race{a}_{n}" for a in range(4)
                                          for n in range(3)])


def test_a_crash_between_copy_and_delete_only_replays_what_the_backend_has(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adopter ending before it deletes the file: the next replay is applied by no one twice."""
    directory = tmp_path / "spool"
    with seenn.server.running(tmp_path / "backend.db", api_key=KEY) as backend:
        dead = leave_dead_file(f"{directory}/", ["job_twice"])
        # The first adopter copies the rows and ends before it deletes the file (a crash).
        monkeypatch.setattr(family_module, "remove_outbox", lambda path, log: None)
        first = exporter_on(directory, backend.url)
        assert first.stats.replayed == 3
        assert first.force_flush(30)
        assert os.path.exists(dead)
        with seenn.SeennClient(KEY, base_url=backend.url) as client:
            delivered = client.jobs.get("job_twice")._raw
        assert delivered["status"] == "completed"
        monkeypatch.undo()
        second = exporter_on(directory, backend.url)  # the file is free again: adopted again
        assert second.stats.replayed == 3
        assert second.force_flush(30)
        # Same keys: the backend answers as it did, applying nothing again.
        assert (second.stats.delivered, second.stats.rejected) == (3, 0)
        with seenn.SeennClient(KEY, base_url=backend.url) as client:
            assert client.jobs.get("job_twice")._raw == delivered  # updatedAt included
        assert not os.path.exists(dead)
        second.shutdown(timeout=5)
        first.shutdown(timeout=5)


def test_a_live_process_file_is_never_adopted(tmp_path: Path, spawn: Any) -> None:
    """A file whose process is alive stays its own, at start and at every later look."""
    directory = tmp_path / "spool"
    results, stop = spawn.Queue(), spawn.Event()
    holder = spawn.Process(target=hold, args=(f"{directory}/", closed_url(), ["job_live"],
                                              results, stop))
    holder.start()
    try:
        report = results.get(timeout=120)
        assert report["count"] == 3
        looker = exporter_on(directory)
        assert looker.stats.replayed == 0
        looker._clock = lambda: time.monotonic() + 3600  # the periodic look is due
        looker.export([])
        assert looker.stats.replayed == 0
        assert rows(report["path"]) == rows_of("job_live")
        stop.set()
        assert results.get(timeout=60) == 3  # the holder still has all its rows
        looker.shutdown(timeout=0.1)
    finally:
        stop.set()
        holder.join(60)
    assert holder.exitcode == 0


def test_a_running_exporter_adopts_files_of_processes_that_end_later(
        tmp_path: Path, server: RecordingServer) -> None:
    """Once a minute, from export(), a running exporter adopts what a process left since."""
    directory = tmp_path / "spool"
    running = exporter_on(f"{directory}/", server.url)
    job_id, dead = run_until_killed(directory)
    running.export([])
    assert running.stats.replayed == 0 and os.path.exists(dead)  # not due yet
    running._clock = lambda: time.monotonic() + 61
    running.export([])
    assert running.stats.replayed == 3 and not os.path.exists(dead)
    assert running.force_flush(30)
    assert sorted(keys_sent(server)) == [f"{job_id}.0", f"{job_id}.1", f"{job_id}.2"]
    assert server.backend.jobs[job_id]["status"] == "completed"
    running.shutdown(timeout=5)


def test_a_file_path_setting_adopts_dead_files_beside_it(tmp_path: Path,
                                                         server: RecordingServer) -> None:
    """With a file path, the files beside it of ended processes are adopted too."""
    path = tmp_path / "outbox.db"
    holder = exporter_on(path)  # takes the named file
    beside = leave_dead_file(path, ["job_beside"])  # its file beside the named one: ended
    assert beside.startswith(f"{path}.")
    holder.shutdown(timeout=0.1)
    later = exporter_on(path, server.url)
    assert later._outbox_path == str(path)
    assert later.stats.replayed == 3
    assert later.force_flush(30)
    assert sorted(keys_sent(server)) == expected_keys(["job_beside"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "outbox.db", "outbox.db-shm", "outbox.db-wal", "outbox.db.lock"]
    later.shutdown(timeout=5)


# -- fork ------------------------------------------------------------------------------------


def fork_and_report(exporter: HTTPExporter) -> dict[str, Any]:
    """In a forked child: file a job, report what the child's exporter uses, and exit."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            exporter.export(lifecycle("job_child"))
            outbox = exporter._outbox
            report = {"path": exporter._outbox_path, "replayed": exporter.stats.replayed,
                      "count": outbox.count if outbox is not None else None}
            os.write(write, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    report: dict[str, Any] = json.loads(data)
    report["pid"] = pid
    return report


@in_a_fresh_process
def test_a_forked_child_writes_its_own_file_and_leaves_the_parents(tmp_path: Path) -> None:
    """After fork() the child keeps its events in a file of its own; the parent's is untouched."""
    directory = tmp_path / "spool"
    parent = exporter_on(f"{directory}/")
    parent_path = parent._outbox_path
    assert parent_path is not None
    parent.export(lifecycle("job_parent"))
    before = rows(parent_path)
    assert len(before) == 3
    child = fork_and_report(parent)
    assert child["path"] != parent_path
    match = IN_DIRECTORY.fullmatch(Path(child["path"]).name)
    assert match is not None and int(match.group(1)) == child["pid"]
    assert child["replayed"] == 0  # the live parent's file was not adopted
    assert child["count"] == 3
    assert rows(child["path"]) == rows_of("job_child")
    assert rows(parent_path) == before
    assert parent._outbox is not None and not parent._outbox.closed
    # The child ended without delivering: its file is adopted by the parent's next look.
    parent._clock = lambda: time.monotonic() + 61
    parent.export([])
    assert parent.stats.replayed == 3
    assert rows(parent_path) == sorted(before + rows_of("job_child"))
    assert not os.path.exists(child["path"])
    parent.shutdown(timeout=0.1)


@in_a_fresh_process
def test_a_forked_child_does_not_keep_its_parents_file_locked(tmp_path: Path) -> None:
    """Once the parent lets its file go, it is adopted though a child forked earlier still runs."""
    directory = tmp_path / "spool"
    parent = exporter_on(f"{directory}/")
    parent.export(lifecycle("job_parent"))
    parent_path = parent._outbox_path
    assert parent_path is not None
    read, write = os.pipe()
    ready_read, ready_write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: set up (fork hooks done), runs until the test closes the pipe
        try:
            os.close(write)
            os.write(ready_write, b"r")
            os.read(read, 1)
        finally:
            os._exit(0)
    os.close(read)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"r"  # its own outbox is open: it adopts no more
        os.close(ready_read)
        parent.shutdown(timeout=0.1)  # its events undelivered: the file stays, unclaimed
        later = exporter_on(directory)
        assert later.stats.replayed == 3
        assert not os.path.exists(parent_path)
        later.shutdown(timeout=0.1)
    finally:
        os.close(write)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@in_a_fresh_process
def test_a_forked_child_of_a_file_path_setting_keeps_a_file_beside_it(tmp_path: Path) -> None:
    """With a file path, a forked child opens a file beside the one its parent holds."""
    path = tmp_path / "outbox.db"
    parent = exporter_on(path)
    child = fork_and_report(parent)
    assert re.fullmatch(re.escape(str(path)) + rf"\.{child['pid']}-[0-9a-f]{{8}}", child["path"])
    assert rows(child["path"]) == rows_of("job_child")
    assert rows(path) == []
    parent.shutdown(timeout=0.1)


# -- what is never touched -------------------------------------------------------------------


def test_files_that_are_not_outboxes_are_left_alone(tmp_path: Path) -> None:
    """Other files, odd files named like outboxes, symlinks and directories stay as they were."""
    directory = tmp_path / "spool"
    directory.mkdir()
    elsewhere = tmp_path / "elsewhere"
    real = leave_dead_file(f"{elsewhere}/", ["job_elsewhere"])
    not_sqlite = directory / "seenn-outbox-host-1-0123abcd.sqlite"
    not_sqlite.write_text("not a database")
    other_db = directory / "seenn-outbox-host-2-0123abce.sqlite"
    with sqlite3.connect(other_db) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('keep me')")
    db.close()
    link = directory / "seenn-outbox-host-3-0123abcf.sqlite"
    link.symlink_to(real)
    subdirectory = directory / "seenn-outbox-host-4-0123abd0.sqlite"
    subdirectory.mkdir()
    for name in (not_sqlite, other_db, link, subdirectory):
        Path(f"{name}.lock").write_text("")
    (directory / "notes.txt").write_text("mine")
    (directory / "other.sqlite").write_bytes(Path(real).read_bytes())
    before = {p.name: (p.read_bytes() if p.is_file() else None)
              for p in directory.iterdir()}
    exporter = exporter_on(directory)
    assert exporter.stats.replayed == 0
    own = Path(exporter._outbox_path or "").name
    after = {p.name: (p.read_bytes() if p.is_file() else None)
             for p in directory.iterdir() if not p.name.startswith(own)}
    assert after == before
    assert rows(real) == rows_of("job_elsewhere")
    exporter.shutdown(timeout=0.1)


# -- the lock-file race ----------------------------------------------------------------------


@pytest.mark.parametrize("what", ["lock-replaced", "adopted-meanwhile"])
def test_a_lock_file_changed_between_open_and_lock_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """A lock taken on a lock file deleted meanwhile claims nothing: the file is not adopted."""
    directory = tmp_path / "spool"
    dead = leave_dead_file(f"{directory}/", ["job_raced"])
    lock = dead + ".lock"

    def meanwhile(path: str) -> None:
        if path != lock:
            return
        monkeypatch.setattr(outbox_module, "_before_lock", lambda path: None)
        os.unlink(lock)  # as an adopter that just finished would, or ...
        if what == "lock-replaced":
            Path(lock).write_text("")  # ... and then a new owner making it anew
        else:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(dead + suffix):
                    os.unlink(dead + suffix)

    monkeypatch.setattr(outbox_module, "_before_lock", meanwhile)
    exporter = exporter_on(directory)
    assert exporter.stats.replayed == 0
    assert exporter._outbox is not None and exporter._outbox.count == 0
    if what == "lock-replaced":
        assert rows(dead) == rows_of("job_raced")
        exporter.shutdown(timeout=0.1)
        later = exporter_on(directory)  # nothing was lost: the next look adopts it
        assert later.stats.replayed == 3
        later.shutdown(timeout=0.1)
    else:
        assert outbox_files(directory) == [Path(exporter._outbox_path or "").name]
        assert not os.path.exists(lock)  # not made again by the loser
        exporter.shutdown(timeout=0.1)


def test_a_claim_on_a_lock_file_replaced_meanwhile_is_taken_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a claimed lock file was deleted before the lock, the claim is made on the new one."""
    path = tmp_path / "outbox.db"
    lock = f"{path}.lock"

    def meanwhile(name: str) -> None:
        if name == lock:
            monkeypatch.setattr(outbox_module, "_before_lock", lambda name: None)
            os.unlink(lock)

    monkeypatch.setattr(outbox_module, "_before_lock", meanwhile)
    holder = exporter_on(path)
    assert holder._outbox_path == str(path)
    owner = holder._outbox._owner if holder._outbox is not None else None
    assert owner is not None
    assert os.fstat(owner.fileno()).st_ino == os.stat(lock).st_ino
    second = exporter_on(path)  # so the lock at that path is really held: a file beside it
    assert second._outbox_path != str(path)
    second.shutdown(timeout=0.1)
    holder.shutdown(timeout=0.1)


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "reason"), [
    ("out\0box", "NUL"), (b"/tmp/outbox.db", "bytes"), ("", "empty"), (42, "path")])
def test_outbox_settings_that_are_not_paths_are_refused(setting: Any, reason: str) -> None:
    """A setting that is no usable path is a ValidationError naming outbox."""
    with pytest.raises(seenn.ValidationError) as caught:
        HTTPExporter(api_key=KEY, base_url="http://127.0.0.1:9", outbox=setting)
    assert caught.value.details is not None and caught.value.details["field"] == "outbox"
    assert reason in str(caught.value)


@pytest.mark.parametrize("where", ["missing-parent", "a-file", "dangling-symlink"])
def test_a_directory_setting_that_cannot_be_one_is_refused(tmp_path: Path, where: str) -> None:
    """A directory setting under a missing parent, on a file or a dangling link is refused."""
    target = tmp_path / "spool"
    if where == "missing-parent":
        target = tmp_path / "missing" / "spool"
    elif where == "a-file":
        target.write_text("a file")
    else:
        target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(seenn.ValidationError) as caught:
        HTTPExporter(api_key=KEY, base_url="http://127.0.0.1:9", outbox=f"{target}/")
    assert caught.value.details is not None and caught.value.details["field"] == "outbox"
    assert str(target) in str(caught.value)
    assert not (tmp_path / "missing").exists()


NOT_WRITABLE = textwrap.dedent("""
    import os, sys
    import seenn
    from seenn.exporters import HTTPExporter
    # Everything loaded first: once nobody, the interpreter's own files may be out of reach.
    HTTPExporter(api_key="k", base_url="http://127.0.0.1:9").shutdown(0)
    if os.geteuid() == 0:  # root writes anywhere: be nobody (all imports are done)
        os.setgid(65534)
        os.setuid(65534)
    try:
        HTTPExporter(api_key="k", base_url="http://127.0.0.1:9", outbox=sys.argv[1])
    except seenn.ValidationError as error:
        print(error.details["field"], error)
""")


def test_a_directory_that_cannot_be_written_is_refused() -> None:
    """A directory the process may not write in is a ValidationError naming outbox."""
    directory = tempfile.mkdtemp(prefix="seenn-ro-")
    try:
        os.chmod(directory, 0o555)
        out = subprocess.run([sys.executable, "-c", NOT_WRITABLE, directory],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SEENN_EXPORTER": "none"})
        assert out.stdout.startswith("outbox "), out.stderr
        assert directory in out.stdout and "Permission denied" in out.stdout
        assert os.listdir(directory) == []
    finally:
        os.chmod(directory, 0o700)
        os.rmdir(directory)


def test_odd_characters_and_a_symlinked_directory_work(tmp_path: Path,
                                                       server: RecordingServer) -> None:
    """A directory with spaces, ?, #, % and accents, reached through a symlink, works end to end."""
    real = tmp_path / "odd dir ?#%é"
    link = tmp_path / "link ?#%é"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    leave_dead_file(link, ["job_odd"])
    exporter = exporter_on(link, server.url)
    assert Path(exporter._outbox_path or "").parent == link
    assert exporter.stats.replayed == 3
    assert exporter.force_flush(30)
    assert sorted(keys_sent(server)) == expected_keys(["job_odd"])
    exporter.shutdown(timeout=5)
    assert list(real.iterdir()) == []
    assert link.is_symlink()


def test_a_broken_dead_row_is_logged_and_the_rest_adopted(
        tmp_path: Path, server: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    """An unreadable row of a dead file is logged and dropped; its readable rows are sent."""
    directory = tmp_path / "spool"
    dead = leave_dead_file(f"{directory}/", ["job_ok"])
    with sqlite3.connect(dead) as db:
        db.execute("INSERT INTO events VALUES ('job_bad', 0, 'started', '{not json', 0)")
    db.close()
    with caplog.at_level(logging.INFO, logger="seenn"):
        exporter = exporter_on(directory, server.url)
    assert exporter.stats.replayed == 3
    assert any("unreadable row" in r.getMessage() for r in caplog.records)
    assert any("adopted 3 undelivered event(s)" in r.getMessage() for r in caplog.records)
    assert exporter.force_flush(30)
    assert sorted(keys_sent(server)) == expected_keys(["job_ok"])
    assert not os.path.exists(dead)
    exporter.shutdown(timeout=5)
