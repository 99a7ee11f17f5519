"""Drive a job through its whole life with the REST client.

Run it from the repository root, after ``python -m pip install -e .``, against
any Seenn-compatible backend; ``seenn serve`` in a second terminal is one, and
prints the secret key to use::

    seenn serve --port 8080 --db /tmp/seenn.db
    export SEENN_API_KEY=sk_test_... SEENN_BASE_URL=http://127.0.0.1:8080
    python examples/rest_client.py

It starts a video job, reports progress through four stages, completes it,
reads it back, lists the user's jobs and makes a small batch of child jobs.
"""

from __future__ import annotations

import seenn


def main() -> None:
    with seenn.SeennClient() as client:  # key and URL from SEENN_API_KEY / SEENN_BASE_URL
        job = client.jobs.start(
            "video-generation",
            user_id="user_123",
            title="Generating video...",
            metadata={"prompt": "A cat playing piano"},
            queue={"position": 0, "total": 1},
            stage={"name": "queued", "current": 1, "total": 4},
        )
        print(f"started {job.id}: {job.status}")

        for number, (name, progress) in enumerate(
                [("render", 40), ("encode", 70), ("upload", 90)], start=2):
            job.set_progress(progress, message=f"{name}...",
                             stage=seenn.Stage(name, number, 4))
            print(f"  {job.progress:3d}%  {job.stage.name if job.stage else ''}")

        job.complete(result={"type": "video", "url": "https://cdn.example.com/cat.mp4"},
                     message="Video ready!")
        print(f"finished {job.id}: {job.status} ({job.progress}%)")

        again = client.jobs.get(job.id)
        print(f"read back: {again.status}, result url {again.result.url if again.result else None}")

        page = client.jobs.list("user_123", limit=10)
        print(f"user_123 has {len(page.jobs)} job(s) on the first page")

        try:
            job.set_progress(10)
        except seenn.ConflictError as error:
            print(f"a finished job refuses updates: {error.code}")

        batch = client.jobs.create_batch("thumbnail", user_id="user_123",
                                         parent_title="Thumbnails",
                                         child_titles=["small", "medium", "large"])
        for child in batch.children:
            child.complete(result={"type": "image", "url": f"https://cdn/{child.title}.png"})
        print(f"batch {batch.parent.id}: {len(batch.children)} children done")


if __name__ == "__main__":
    main()
