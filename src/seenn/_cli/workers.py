"""``seenn serve --workers N``: N processes serving one listening socket, and their supervisor.

The parent binds the socket (so a busy port fails before anything starts), sets up
the database once (so a new database gets one key pair, not one per process), then
forks the workers. Each worker opens its own database connections and runs the
threaded ``WSGIServer`` on the inherited socket; the kernel hands each new connection
to one of them. The parent only supervises:

* It prints the "listening" line once every worker is ready.
* SIGTERM or SIGINT (Ctrl-C reaches the whole process group) stops every worker: each
  stops accepting, lets the requests it is answering finish for a moment, and exits;
  one still there after a grace period is killed. The parent exits 0 once all are gone.
* A worker that dies after it was ready (killed, out of memory) is reported on stderr
  and replaced. A worker that dies before it was ready would die again: the parent
  stops the others and exits 1.
* A parent that dies without stopping them (SIGKILL) closes the write end of a pipe
  the workers watch: they stop as if told to, rather than serve on as orphans.

Signals reach the parent's loop through ``signal.set_wakeup_fd``, so nothing runs in
a signal handler but the write of its number, and no fork happens inside one.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from seenn._cli.errors import CLIError

MAX_WORKERS = 64
# How long stopping workers get before they are killed: a worker gives the requests it
# is answering DRAIN_SECONDS, and needs a moment more to close its database.
DRAIN_SECONDS = 5.0
_STOP_GRACE = DRAIN_SECONDS + 5.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What a worker runs: set up, call ready() once it serves, return when told to stop.
Serve = Callable[[Callable[[], None]], None]


class _Stop(BaseException):
    """Raised in a worker's main thread by SIGTERM or SIGINT: stop serving."""


@dataclass
class _Worker:
    pid: int
    ready_fd: int  # the read end of the pipe the worker writes one byte to when ready
    ready: bool = False


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


def _stop_worker(signum: int, frame: FrameType | None) -> None:
    # Once is enough: a second signal must not interrupt the worker's own cleanup.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop


def _watch_parent(lifeline: int) -> None:
    """Stop this worker when the parent is gone, however it went (even SIGKILL)."""
    with contextlib.suppress(OSError):
        while os.read(lifeline, 64):
            pass
    # The parent held the only write end: end of file means it has exited.
    os.kill(os.getpid(), signal.SIGTERM)


def _run_worker(serve: Serve, ready_fd: int, inherited: list[int], lifeline: int) -> NoReturn:
    """The body of a forked worker; it never returns into the parent's code."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, _stop_worker)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True,
                         name="seenn-serve-parent").start()

        def ready() -> None:
            os.write(ready_fd, b"r")
            os.close(ready_fd)

        serve(ready)
        code = 0
    except _Stop:
        code = 0
    except CLIError as error:
        sys.stderr.write(f"seenn: {error}\n")
        code = error.status
    except BaseException as error:  # a worker ends in one line, whatever happened
        detail = " ".join(str(error).split())
        sys.stderr.write(f"seenn: serve: worker process {os.getpid()}: "
                         f"{type(error).__name__}: {detail}\n")
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class Supervisor:
    """Forks and watches the worker processes of ``seenn serve --workers N``.

    Args:
        count: How many workers to keep running.
        serve: What each worker runs after the fork.
        announce: Called once, when every first worker is ready (prints the
            "listening" line).
    """

    def __init__(self, count: int, serve: Serve, announce: Callable[[], None]) -> None:
        self.count = count
        self._serve = serve
        self._announce = announce
        self._workers: dict[int, _Worker] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        # Nothing is ever written: a worker reads end of file once the parent is gone.
        self._lifeline_r, self._lifeline_w = os.pipe()

    def run(self) -> int:
        """Start the workers and supervise them until a stop signal; the exit status.

        Raises:
            CLIError: A worker could not be started, or died before it was ready.
        """
        previous = {sig: signal.signal(sig, lambda signum, frame: None)
                    for sig in (*_STOP_SIGNALS, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for _ in range(self.count):
                self._fork()
            announced = False
            while True:
                stop = self._wait(None)
                self._reap(restart=not stop)
                if stop:
                    return 0
                if not announced and all(w.ready for w in self._workers.values()):
                    announced = True
                    self._announce()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(sig, handler)
            self._selector.close()
            for fd in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
                os.close(fd)

    def _fork(self) -> None:
        ready_r, ready_w = os.pipe()
        inherited = [self._wake_r, self._wake_w, self._lifeline_w, ready_r,
                     *(w.ready_fd for w in self._workers.values())]
        # Buffered output would be written again by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        # A stop signal is held until the child has its own handler, and the parent
        # knows the child's pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            os.close(ready_r)
            os.close(ready_w)
            raise CLIError(f"serve: cannot start a worker process: {error}") from None
        if pid == 0:
            _run_worker(self._serve, ready_w, inherited, self._lifeline_r)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        self._workers[pid] = _Worker(pid, ready_r)
        self._selector.register(ready_r, selectors.EVENT_READ, pid)

    def _wait(self, timeout: float | None) -> bool:
        """Wait for a signal or a worker's ready byte; whether a stop signal came."""
        stop = False
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    stop = any(sig in _STOP_SIGNALS for sig in os.read(self._wake_r, 512))
            else:
                self._read_ready(self._workers[key.data])
        return stop

    def _read_ready(self, worker: _Worker, *, gone: bool = False) -> None:
        try:
            data = os.read(worker.ready_fd, 16)
        except BlockingIOError:
            if not gone:
                return
            data = b""
        if data:
            worker.ready = True
        # A byte, or the end of the pipe (the worker is gone): nothing more will come.
        self._selector.unregister(worker.ready_fd)
        os.close(worker.ready_fd)
        worker.ready_fd = -1

    def _reap(self, *, restart: bool) -> None:
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd >= 0:
                self._read_ready(worker, gone=True)
            if not restart:
                continue
            if not worker.ready:
                raise CLIError(f"serve: worker process {pid} {_describe(status)} before it "
                               "was ready; stopping")
            sys.stderr.write(f"seenn serve: worker process {pid} {_describe(status)}; "
                             "starting another\n")
            self._fork()

    def _stop_all(self) -> None:
        """Signal every worker to stop, wait for them, kill the ones that outstay the grace."""
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        while self._workers:
            self._reap(restart=False)
            left = deadline - time.monotonic()
            if not self._workers or left <= 0:
                break
            self._wait(min(left, 0.5))
        for pid, worker in list(self._workers.items()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            sys.stderr.write(f"seenn serve: worker process {pid} did not stop in "
                             f"{_STOP_GRACE:g} s and was killed\n")
            del self._workers[pid]
            if worker.ready_fd >= 0:
                self._read_ready(worker, gone=True)


def drain(connections: Callable[[], int], seconds: float = DRAIN_SECONDS) -> None:
    """Wait, up to ``seconds``, until a stopped server has no connection left open."""
    deadline = time.monotonic() + seconds
    while connections() and time.monotonic() < deadline:
        time.sleep(0.02)
