"""A simulated video-generation pipeline, instrumented with seenn and shown on the console.

Run it::

    python examples/video_pipeline.py

Every state change of every job is printed to stderr by ``ConsoleExporter``:
on a terminal the progress of the running job is a live bar, otherwise each
update is a line. Nothing here talks to a backend: swap the console exporter
for the HTTP exporter (or set ``SEENN_EXPORTER``) and the same code reports to
Seenn Cloud or ``seenn serve``.
"""

from __future__ import annotations

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


def main() -> int:
    """Generate one video that succeeds and one that fails."""
    seenn.configure(exporters=[ConsoleExporter()])
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
