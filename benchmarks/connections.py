"""The connection cap of `seenn serve`: idle connections held, answers and requests/s under a flood.

Starts ``python -m seenn serve --max-connections N`` in a subprocess, opens many
idle connections to it (more than the cap), then reports:

* how many connections the server holds (its open sockets, from ``/proc``) and
  how many of the idle ones it has closed to make room;
* whether a fresh client still gets ``GET /healthz`` answered, and how long it took;
* ``GET /healthz`` requests per second from a few keep-alive clients while the
  idle connections are still open, next to the same figure without them.

    python benchmarks/connections.py [--idle 1000] [--max-connections 256]
                                     [--seconds 2] [--threads 4]

Linux only (it reads ``/proc``). The benchmark raises its own file descriptor
limit to the hard limit to open the idle connections.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import resource
import select
import socket
import tempfile
import threading
import time
from pathlib import Path

from _serve import start_server


def server_sockets(pid: int) -> int:
    """Open sockets of the server, its listener excluded."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count - 1


def open_idle(host: str, port: int, n: int, timeout: float) -> list[socket.socket]:
    """Start ``n`` connects at once; keep those whose handshake completes within ``timeout``."""
    pending = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((host, port))
        pending.append(sock)
    done: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        _, ready, _ = select.select([], pending[:1000], [], deadline - time.monotonic())
        for sock in ready:
            pending.remove(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done.append(sock)
            else:
                sock.close()
    for sock in pending:
        sock.close()
    return done


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has closed."""
    count = 0
    for sock in socks:
        if select.select([sock], [], [], 0)[0]:
            try:
                count += sock.recv(1) == b""
            except OSError:
                count += 1
    return count


def healthz_latency(host: str, port: int) -> tuple[int | None, float]:
    began = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/healthz")
        status: int | None = conn.getresponse().status
        conn.close()
    except OSError:
        status = None
    return status, time.perf_counter() - began


def requests_per_second(host: str, port: int, threads: int, seconds: float) -> float:
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        start.wait()
        while not stop.is_set():
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                counts[index] += 1
            except (OSError, http.client.HTTPException):
                conn.close()  # closed to make room: connect again
                conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000, help="idle connections to open")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as tmp:
        served = start_server(Path(tmp) / "bench.db", "--max-connections",
                              str(args.max_connections))
        proc, host, port = served.proc, served.host, served.port
        try:
            quiet = requests_per_second(host, port, args.threads, args.seconds)
            idle = open_idle(host, port, args.idle, timeout=5.0)
            # Let the server accept what it will.
            deadline = time.monotonic() + 5
            held = server_sockets(proc.pid)
            while time.monotonic() < deadline:
                select.select([], [], [], 0.1)
                now = server_sockets(proc.pid)
                if now == held:
                    break
                held = now
            status, latency = healthz_latency(host, port)
            loaded = requests_per_second(host, port, args.threads, args.seconds)
            evicted = closed_by_server(idle)
            print(f"seenn serve --max-connections {args.max_connections} on {host}:{port}, "
                  f"{os.cpu_count()} cores")
            print(f"{'idle connections opened (handshake done)':<48}{len(idle):>10}")
            print(f"{'connections the server held':<48}{held:>10}")
            print(f"{'GET /healthz from a fresh client':<48}"
                  f"{f'{status} in {latency * 1000:.0f} ms':>10}")
            print(f"{'requests/s, no idle connections':<48}{quiet:>10.0f}")
            print(f"{'requests/s, idle connections open':<48}{loaded:>10.0f}")
            print(f"{'idle connections closed to make room':<48}{evicted:>10}")
            for sock in idle:
                sock.close()
        finally:
            served.stop()


if __name__ == "__main__":
    main()
