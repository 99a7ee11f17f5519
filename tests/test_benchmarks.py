"""The benchmarks' shared parts still work (they are run by hand, not by CI)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmarks_start_seenn_serve_and_find_its_url(tmp_path: Path) -> None:
    """benchmarks/_serve.py reads seenn serve's listening line (it once matched no more)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _serve import start_server
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    served = start_server(tmp_path / "bench.db", "--api-key", "sk_test_bench")
    try:
        assert served.url == f"http://{served.host}:{served.port}"
        assert httpx.get(served.url + "/v1/healthz").status_code == 200
        assert served.secret == "sk_test_bench"
    finally:
        served.stop()
    assert served.proc.returncode is not None


def test_the_benchmarks_start_gunicorn_and_seenn_serve_workers(tmp_path: Path) -> None:
    """benchmarks/_serve.py starts gunicorn and `seenn serve --workers 2`; both answer."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _serve import start_gunicorn, start_server
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for served, secret in (
            (start_gunicorn(tmp_path / "g.db", 2, 2, "sk_test_g", "pk_test_g"), "sk_test_g"),
            (start_server(tmp_path / "s.db", "--workers", "2", "--api-key", "sk_test_s",
                          "--public-key", "pk_test_s"), "sk_test_s")):
        try:
            answer = httpx.get(served.url + "/v1/jobs?userId=u",
                               headers={"Authorization": f"Bearer {secret}"}, timeout=30)
            assert answer.status_code == 200
        finally:
            served.stop()
        assert served.proc.returncode == 0
