"""The conformance kit passes against `seenn serve` and names what a broken backend gets wrong."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import seenn.server
from seenn._cli import main
from seenn.conformance import CheckResult, format_table, run_checks
from seenn.server import RunningServer, WSGIServer


class BrokenBackend:
    """Wraps the reference app with four protocol mistakes real backends make."""

    def __init__(self, app: Callable[..., Iterable[bytes]], secret: str, public: str) -> None:
        self.app, self.secret, self.public = app, secret, public

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> list[bytes]:
        environ.pop("HTTP_IDEMPOTENCY_KEY", None)  # mistake 1: idempotency ignored
        if environ.get("HTTP_AUTHORIZATION") == f"Bearer {self.public}":
            environ["HTTP_AUTHORIZATION"] = f"Bearer {self.secret}"  # mistake 2: pk writes
        seen: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            seen.update(status=status, headers=headers)

        body = b"".join(self.app(environ, capture))
        if environ["PATH_INFO"].endswith("/progress") and seen["status"].startswith("200"):
            data = json.loads(body)
            data["progress"] += 0.5  # mistake 3: fractional progress breaks mobile clients
            body = json.dumps(data).encode()
        headers = [(k, v) for k, v in seen["headers"]
                   if k.lower() not in ("etag", "content-length")]  # mistake 4: no ETag
        start_response(seen["status"], [*headers, ("Content-Length", str(len(body)))])
        return [body]


def _serve(app: Callable[..., Any]) -> tuple[WSGIServer, threading.Thread]:
    server = WSGIServer(("127.0.0.1", 0), app)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server, thread


def test_every_check_passes_against_seenn_serve(backend: RunningServer) -> None:
    """The reference backend passes every check, optional ones included."""
    results = run_checks(backend.url, backend.api_key, public_key=backend.public_key)
    assert [r for r in results if not r.passed] == []
    assert len(results) == 24
    assert format_table(results).endswith("24 passed, 0 failed\n")
    notes = {r.name: r.detail for r in results}
    assert notes["extension wait: long poll with ?wait="] == "watchers hear of a change at once"


def test_extensions_not_offered_pass_with_a_note(tmp_path: Path) -> None:
    """A backend that lists no `wait` extension passes its row, saying it is not offered."""
    with seenn.server.running(tmp_path / "n.db", max_waiters=0) as srv:
        results = {r.name: r for r in run_checks(srv.url, srv.api_key)}
    row = results["extension wait: long poll with ?wait="]
    assert row.passed and row.detail.startswith("not offered")
    assert results["extension jobsByIds: GET /jobs?ids="].passed


def test_a_broken_backend_fails_the_right_rows(backend: RunningServer) -> None:
    """Each mistake of a broken backend shows up as its own failing row, and nothing else."""
    assert backend.public_key is not None
    broken = BrokenBackend(backend.app, backend.api_key, backend.public_key)
    server, thread = _serve(broken)
    try:
        results = run_checks(server.url, backend.api_key, public_key=backend.public_key)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    failed = {r.name: r for r in results if not r.passed}
    assert set(failed) == {
        "progress: integer progress, stage, message",
        "idempotency: one job per Idempotency-Key",
        "public key: cannot write (403)",
        "etag: If-None-Match answers 304",
        # Without ETags neither extension can work: both say so (optional rows).
        "extension jobsByIds: GET /jobs?ids=",
        "extension wait: long poll with ?wait=",
    }
    assert "40.5" in failed["progress: integer progress, stage, message"].detail
    assert failed["etag: If-None-Match answers 304"].optional
    table = format_table(results)
    assert "FAIL  idempotency: one job per Idempotency-Key" in table
    assert "WARN  etag: If-None-Match answers 304" in table
    assert table.endswith("18 passed, 3 failed\n"), table


def test_public_key_rows_are_optional_without_a_public_key(backend: RunningServer) -> None:
    """Without --public-key the public-key rows say so and do not fail the run."""
    results = run_checks(backend.url, backend.api_key)
    rows = {r.name: r for r in results}
    for name in ("public key: can read", "public key: cannot write (403)"):
        assert rows[name] == CheckResult(name, False, "not checked: pass --public-key", True)
    assert all(r.passed or r.optional for r in results)


def test_unreachable_backend_fails_every_row_without_raising() -> None:
    """A backend that cannot be reached fails the rows with the connection error."""
    results = run_checks("http://127.0.0.1:9", "sk_test_x", timeout=2.0)
    assert not any(r.passed for r in results)
    assert "ConnectError" in results[0].detail


def test_cli_exit_status_follows_the_results(backend: RunningServer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`seenn conformance` prints the table and exits 0 on a pass, 1 on a failure."""
    assert backend.public_key is not None
    code = main(["conformance", "--base-url", backend.url, "--api-key", backend.api_key,
                 "--public-key", backend.public_key])
    out = capsys.readouterr().out
    assert code == 0
    assert "PASS  start: POST /jobs returns the job" in out
    broken = BrokenBackend(backend.app, backend.api_key, backend.public_key)
    server, thread = _serve(broken)
    try:
        code = main(["conformance", "--base-url", server.url, "--api-key", backend.api_key])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert code == 1
    assert "FAIL  idempotency" in capsys.readouterr().out
