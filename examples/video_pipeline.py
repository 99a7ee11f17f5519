"""A simulated video-generation pipeline, instrumented with seenn and shown on the console.

Run it from the repository root, after ``python -m pip install -e .``::

    python examples/video_pipeline.py

Every state change of every job is printed to stderr by ``ConsoleExporter``:
on a terminal the progress of the running job is a live bar, otherwise each
update is a line. Nothing talks to a backend unless the environment names one.
To send the same jobs to ``seenn serve`` (or to Seenn Cloud, without
``SEENN_BASE_URL``), start it in a second terminal and use the secret key it
prints::

    seenn serve --port 8080 --db /tmp/seenn.db
    SEENN_API_KEY=sk_test_... SEENN_BASE_URL=http://127.0.0.1:8080 python examples/video_pipeline.py
    seenn jobs list user_123 --base-url http://127.0.0.1:8080 --api-key sk_test_...

With a key in the environment the HTTP exporter replaces the console;
``SEENN_EXPORTER=http,console`` (and the key) does both.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import seenn
from seenn.exporters import ConsoleExporter

STAGES = ["queued", "render", "encode", "upload"]


@dataclass
class VideoRequest:
    """What a user asked for."""

    user_id: str
    prompt: str
    frames: int = 48


class RenderError(Exception):
    """The renderer gave up; ``code`` becomes the job's error code."""

    code = "RENDER_FAILED"


def render_frame(request: VideoRequest, index: int) -> bytes:
    """Pretend to render one frame."""
    time.sleep(0.01)
    if request.prompt == "a paradox" and index == request.frames // 2:
        raise RenderError(f"GPU memory exceeded at frame {index}")
    return bytes([index % 256])


@seenn.job("thumbnail")
def make_thumbnail(frame: bytes) -> bytes:
    """A small job of its own: a child of the video job that calls it."""
    time.sleep(0.01)
    return frame


@seenn.job(
    "video-generation",
    user_id=lambda request: request.user_id,
    title=lambda request: f"Video: {request.prompt}",
    metadata=lambda request: {"prompt": request.prompt},
    stages=STAGES,
    result=lambda url: {"type": "video", "url": url},
    retryable=(TimeoutError,),
)
def generate_video(request: VideoRequest) -> str:
    """Generate a video, reporting each stage and each frame."""
    with seenn.stage("queued"):
        time.sleep(0.05)
    with seenn.stage("render"):
        frames = [render_frame(request, index)
                  for index in seenn.iterate(range(request.frames), message="Rendering frames")]
    # Work handed to threads keeps reporting to this job.
    with seenn.stage("encode"), ThreadPoolExecutor(2) as pool:
        chunks = list(pool.map(seenn.with_current_job(encode_chunk), frames))
    with seenn.stage("upload"):
        make_thumbnail(chunks[0])
        time.sleep(0.05)
    return f"https://cdn.example.com/{request.user_id}/{request.prompt.replace(' ', '-')}.mp4"


def encode_chunk(frame: bytes) -> bytes:
    """Encode one chunk; runs in a pool thread, inside the caller's job."""
    job = seenn.current_job()
    assert job is not None, "with_current_job() carries the job into the thread"
    time.sleep(0.002)
    return frame


def configure_exporters() -> None:
    """Print jobs on the console, unless the environment names where they go.

    ``import seenn`` has already set up what ``SEENN_EXPORTER`` or
    ``SEENN_API_KEY`` asks for; only with neither does the example pick the
    console.
    """
    if "SEENN_EXPORTER" not in os.environ and "SEENN_API_KEY" not in os.environ:
        seenn.configure(exporters=[ConsoleExporter()])


def main() -> int:
    """Generate one video that succeeds and one that fails."""
    configure_exporters()
    url = generate_video(VideoRequest(user_id="user_123", prompt="a cat surfing"))
    print(f"video ready: {url}")
    try:
        generate_video(VideoRequest(user_id="user_456", prompt="a paradox"))
    except RenderError as error:
        print(f"video failed: {error}")
    # Deliver what is still queued before the program ends (exit would do it too).
    seenn.shutdown(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
