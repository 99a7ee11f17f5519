"""How good is "how long?": seenn's ETA against tqdm's rate and history's median.

Simulates families of jobs with realistic spreads and uneven pace, builds each
family's history from completed jobs, then follows new jobs and asks three
estimators, at 10/25/50/75/90 % progress, how long each job has left:

* **seenn**: ``seenn._core.eta.estimate`` (history blended with the job's own
  pace, per stage when the job has stages), what ``seenn serve`` and
  ``TrackedJob.eta`` show;
* **tqdm**: extrapolation of the current rate, as tqdm does it (exponential
  moving averages of progress and time steps, smoothing 0.3, bias-corrected);
* **median**: history alone (the median duration minus the time elapsed).

It prints the median absolute percentage error of the remaining time (the
answer to "how long?") at each checkpoint, per family and over all jobs.
Target: seenn better than both at every checkpoint, and under 15 % from 25 %
progress on.

    python benchmarks/eta.py [--history 300] [--jobs 500] [--seed 7]

The families (each job's pace is uneven in a different way):

* ``video``: stages render / encode / upload (equal thirds of the bar); a
  per-job speed factor (prompt complexity, lognormal); render reports each of
  48 frames, the first four three times slower (warm-up); encode reports
  nothing until it ends; upload is network-bound and independent of the rest.
* ``images``: no stages; 20 to 200 images a job (a wide spread of durations),
  each about as long as the others: a steady pace.
* ``export``: no stages; a query that reports 2 % and nothing more for the
  first quarter of the time, then rows at a steady pace.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from seenn._core.eta import (
    CURVE_POINTS,
    History,
    Sample,
    curve_of,
    curve_point,
    estimate,
    history_of,
    stats_of,
)

CHECKPOINTS = (0.10, 0.25, 0.50, 0.75, 0.90)


@dataclass
class Update:
    """One progress report of a simulated job."""

    time: float
    progress: float
    stage: int | None = None  # 0-based index among the job's stages
    entered: float = 0.0  # when the current stage began
    done: tuple[float, ...] = ()  # durations of the earlier stages


@dataclass
class Job:
    """A simulated job: its reports, its true length, and its stage lengths."""

    updates: list[Update]
    duration: float
    stage_names: tuple[str, ...] = ()
    stage_durations: tuple[float, ...] = ()


def lognormal(rng: random.Random, sigma: float) -> float:
    return math.exp(rng.gauss(0.0, sigma))


def video_job(rng: random.Random) -> Job:
    names = ("render", "encode", "upload")
    speed = lognormal(rng, 0.3)
    render = 60.0 * speed * lognormal(rng, 0.1)
    encode = 40.0 * speed * lognormal(rng, 0.15)
    upload = 8.0 * lognormal(rng, 0.4)
    updates: list[Update] = []
    frames = 48
    weights = [3.0 if i < 4 else 1.0 for i in range(frames)]
    unit = render / sum(weights)
    t = 0.0
    updates.append(Update(0.0, 0.0, 0, 0.0))
    for i in range(frames):
        t += weights[i] * unit * lognormal(rng, 0.1)
        updates.append(Update(t, (i + 1) / frames / 3, 0, 0.0))
    render = t
    updates.append(Update(t, 1 / 3, 1, render, (render,)))  # encode: nothing until it ends
    t += encode
    updates.append(Update(t, 2 / 3, 2, t, (render, encode)))
    start_upload = t
    for chunk in range(10):
        t += upload / 10 * lognormal(rng, 0.2)
        updates.append(Update(t, 2 / 3 + (chunk + 1) / 30, 2, start_upload, (render, encode)))
    upload = t - start_upload
    return Job(updates, t, names, (render, encode, upload))


def images_job(rng: random.Random) -> Job:
    count = rng.randint(20, 200)
    per_image = 0.5 * lognormal(rng, 0.2)
    t = 0.0
    updates = [Update(0.0, 0.0)]
    for i in range(count):
        t += per_image * lognormal(rng, 0.3)
        updates.append(Update(t, (i + 1) / count))
    return Job(updates, t)


def export_job(rng: random.Random) -> Job:
    speed = lognormal(rng, 0.25)
    query = 20.0 * speed * lognormal(rng, 0.2)
    rows = 60.0 * speed * lognormal(rng, 0.1)
    updates = [Update(0.0, 0.0), Update(query * 0.1, 0.02)]
    t = query
    steps = 50
    for i in range(steps):
        t += rows / steps * lognormal(rng, 0.2)
        updates.append(Update(t, 0.02 + 0.98 * (i + 1) / steps))
    return Job(updates, t)


FAMILIES: dict[str, Callable[[random.Random], Job]] = {
    "video": video_job, "images": images_job, "export": export_job}


def sample_of(job: Job) -> Sample:
    """What a backend keeps of a completed job: its duration and progress curve."""
    reached: list[float | None] = []
    for index in range(CURVE_POINTS):
        point = index / (CURVE_POINTS - 1)
        reached.append(next((u.time for u in job.updates if u.progress >= point - 1e-9),
                            None))
    return Sample(job.duration, curve_of(reached, job.duration))


def family_history(jobs: list[Job]) -> History:
    stages = {}
    if jobs[0].stage_names:
        for index, name in enumerate(jobs[0].stage_names):
            stages[name] = stats_of([job.stage_durations[index] for job in jobs])
    return history_of([sample_of(job) for job in jobs], stages)


def at_checkpoint(job: Job, checkpoint: float) -> Update:
    """The first report at or past ``checkpoint`` (what a watcher sees then)."""
    for update in job.updates:
        if update.progress >= checkpoint - 1e-9:
            return update
    return job.updates[-1]


def seenn_remaining(job: Job, update: Update, history: History) -> float | None:
    seen = [u for u in job.updates if u.time <= update.time]
    reached = next(u.time for u in seen if u.progress >= update.progress - 1e-12)
    points: dict[int, float] = {}
    for u in seen:
        for index in range(curve_point(u.progress) + 1):
            points.setdefault(index, u.time)
    found = estimate(update.time, update.progress, reached_at=reached, history=history,
                     reached_times=points)
    return None if found is None else found.remaining


def tqdm_remaining(job: Job, update: Update) -> float | None:
    """tqdm's estimate: EMAs of progress and time steps (smoothing 0.3, debiased)."""
    alpha, beta = 0.3, 0.7
    ema_dn = ema_dt = 0.0
    calls = 0
    last = job.updates[0]
    for current in job.updates[1:]:
        if current.time > update.time:
            break
        dn, dt = current.progress - last.progress, current.time - last.time
        ema_dn = alpha * dn + beta * ema_dn
        ema_dt = alpha * dt + beta * ema_dt
        calls += 1
        last = current
    if calls == 0 or ema_dn <= 0:
        return None
    correction = 1 - beta ** calls
    rate = (ema_dn / correction) / (ema_dt / correction)
    return (1 - update.progress) / rate if rate > 0 else None


def median_remaining(update: Update, history: History) -> float:
    return max(history.total.p50 - update.time, 0.0)


def ape(estimated: float | None, true: float) -> float:
    if estimated is None:
        return 100.0  # no answer is as bad as "no idea"
    return abs(estimated - true) / true * 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--history", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    errors: dict[tuple[str, str, float], list[float]] = {}
    for family, make in FAMILIES.items():
        history = family_history([make(rng) for _ in range(args.history)])
        for _ in range(args.jobs):
            job = make(rng)
            for checkpoint in CHECKPOINTS:
                update = at_checkpoint(job, checkpoint)
                true = job.duration - update.time
                if true <= 0:
                    continue
                for name, value in (
                        ("seenn", seenn_remaining(job, update, history)),
                        ("tqdm", tqdm_remaining(job, update)),
                        ("median", median_remaining(update, history))):
                    for key in ((family, name, checkpoint), ("all", name, checkpoint)):
                        errors.setdefault(key, []).append(ape(value, true))

    print("Median absolute % error of the remaining time, at each progress checkpoint")
    header = "family   estimator " + "".join(f"{int(c * 100):>8}%" for c in CHECKPOINTS)
    print(header)
    print("-" * len(header))
    ok = True
    for family in (*FAMILIES, "all"):
        for name in ("seenn", "tqdm", "median"):
            row = [statistics.median(errors[(family, name, c)]) for c in CHECKPOINTS]
            print(f"{family:8} {name:9} " + "".join(f"{value:9.1f}" for value in row))
        if family == "all":
            for index, checkpoint in enumerate(CHECKPOINTS):
                mine = statistics.median(errors[("all", "seenn", checkpoint)])
                others = [statistics.median(errors[("all", n, checkpoint)])
                          for n in ("tqdm", "median")]
                if mine >= min(others) or (checkpoint >= 0.25 and mine >= 15):
                    ok = False
                _ = index
        print()
    print("target (all jobs: better than both everywhere, < 15 % from 25 % on):",
          "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
