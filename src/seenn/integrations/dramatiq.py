"""Dramatiq: an actor whose function carries ``@seenn.job`` is one job, from ``send()`` to its end.

Call :func:`instrument` once in every process that sends or runs messages,
before the broker is made or after it is set as the global broker (the module
that creates the broker is the usual place)::

    import dramatiq
    import seenn
    from dramatiq.brokers.redis import RedisBroker
    from seenn.integrations import dramatiq as seenn_dramatiq

    seenn_dramatiq.instrument()
    dramatiq.set_broker(RedisBroker(url="redis://..."))

    @dramatiq.actor(max_retries=3)
    @seenn.job("video-generation", user_id=lambda prompt, user: user)
    def render(prompt, user): ...

    job_id = render.send("a cat", "user_123").message_id   # the job's id

seenn adds one middleware to each broker, first in its list, so that it runs
its ``after_*`` hooks last, once Dramatiq's ``Retries`` has decided:

* **Send** (``before_enqueue``, in the sending process): the job is made, with
  the message id as its id, and the ``seenn-job`` carrier goes in
  ``message.options``; it is started ``queued`` once the message is out
  (``after_enqueue``): a message the broker did not take makes no job.
* **Run** (``before_process_message``, on the worker thread that calls the
  actor): the job is resumed from the options (or started, for a message sent
  without seenn) and made ambient; the actor's ``@seenn.job`` call runs in it.
* **Retry** (``before_enqueue`` of the message ``Retries`` sends again): the
  job goes back to ``queued``, "Waiting for attempt 2", before the message goes
  out, and the message carries the job as it is then (its children counted);
  the next attempt resumes it and says ``"Attempt 2 of 4"``. It fails only when
  Dramatiq gives up (or the broker does not take the message again).
* **End** (``after_process_message``, same thread): completed, or failed by
  the exception the actor raised (``TimeLimitExceeded`` included); a skipped
  message (``after_skip_message``: ``AgeLimit``, a ``SkipMessage``) ends ``CANCELLED``.
* **Exit** (``after_worker_shutdown``): a worker process flushes its events
  before it exits (forked worker processes end with ``os._exit``).

Dramatiq does not notice a worker process that dies (SIGKILL, out of memory):
its job is ended by the backend's stale limit (``WORKER_LOST``), unless the
Redis broker delivers the message again first (after its heartbeat timeout),
which resumes the same job.
"""

from __future__ import annotations

import functools
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from seenn._core.models import Queue
from seenn._instrumentation.decorator import JobSpec
from seenn.integrations._common import (
    FLUSH_TIMEOUT,
    Patches,
    Running,
    carrier_in,
    flush,
    guarded,
    spec_of,
    waiting_in,
    worker_error,
)
from seenn.propagation._carrier import CARRIER_KEY, encode_job
from seenn.propagation._handover import (
    carrier_of,
    is_live_here,
    own,
    prepare,
    requeue,
    start_prepared,
)

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_lock = threading.Lock()
_active = False
_flush_timeout = FLUSH_TIMEOUT
_running = Running()  # messages running in this process
_sending = Running()  # made at before_enqueue, started at after_enqueue
_resending = Running()  # running here and sent again (a retry): requeued, not yet out
# The brokers seenn's middleware was added to, to take it out again.
_brokers: weakref.WeakSet[Any] = weakref.WeakSet()
_middleware_class: type | None = None
_patches = Patches()  # Broker.__init__
_MAX_REASON = 1000


def instrument(*, flush_timeout: float = FLUSH_TIMEOUT) -> None:
    """Track the messages of every Dramatiq actor whose function has ``@seenn.job``.

    Idempotent and process-wide: call it in the process that sends messages and
    in the worker alike. It adds seenn's middleware, first, to the global broker
    if one is set (``dramatiq.set_broker``) and to every broker made afterwards
    (it wraps ``Broker.__init__``). A broker made earlier and never set as the
    global one is not reached: call ``instrument()`` before making it.

    Args:
        flush_timeout: Seconds a worker process waits, as it exits, for its
            jobs' events to be delivered.
    """
    global _active, _flush_timeout
    import dramatiq.broker

    with _lock:
        _flush_timeout = flush_timeout
        _active = True
        _patches.install(dramatiq.broker.Broker, "__init__", _patched_init)
        current = dramatiq.broker.global_broker  # not get_broker(): that would make one
        if current is not None:
            _attach(current)


def uninstrument() -> None:
    """Take seenn's middleware out of the brokers it was added to (running jobs keep theirs).

    Brokers made afterwards get none.
    """
    global _active

    with _lock:
        _active = False
        # Where another library wrapped Broker.__init__ since, seenn's part stays,
        # idle until instrument().
        _patches.remove()
        cls = _middleware_class
        for broker in list(_brokers):
            broker.middleware[:] = [m for m in broker.middleware
                                    if cls is None or not isinstance(m, cls)]
        _brokers.clear()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _active


# -- adding the middleware --------------------------------------------------------------


def _patched_init(original: Any) -> Any:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _active:
            _attach(self)

    return __init__


@guarded("adding seenn's middleware to a Dramatiq broker")
def _attach(broker: Any) -> None:
    cls = _middleware()
    if any(isinstance(m, cls) for m in broker.middleware):
        return
    # First in the list: its before_* hooks run first and its after_* hooks
    # last (Dramatiq runs them in reverse), after Retries has re-enqueued the
    # message or marked it failed.
    if broker.middleware:
        broker.add_middleware(cls(), before=type(broker.middleware[0]))
    else:
        broker.add_middleware(cls())
    _brokers.add(broker)


def _middleware() -> type:
    """seenn's ``dramatiq.Middleware`` subclass (made on first use: Dramatiq loads lazily)."""
    global _middleware_class
    if _middleware_class is not None:
        return _middleware_class
    from dramatiq.middleware import Middleware

    class SeennMiddleware(Middleware):
        """Tracks the messages of ``@seenn.job`` actors as jobs (seenn.integrations.dramatiq)."""

        def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
            _on_enqueue(broker, message)

        def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
            _on_enqueued(broker, message)

        def before_process_message(self, broker: Any, message: Any) -> None:
            _on_process(broker, message)

        def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                                  exception: BaseException | None = None) -> None:
            _on_processed(message, exception)

        def after_skip_message(self, broker: Any, message: Any) -> None:
            _on_skipped(message)

        def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
            _on_exit()

    _middleware_class = SeennMiddleware
    return SeennMiddleware


# -- sending ------------------------------------------------------------------------------


def _spec_of_actor(actor: Any) -> JobSpec | None:
    """The ``@seenn.job`` decoration of an actor's function, through Dramatiq's own wrapping.

    An async function is wrapped by ``async_to_sync`` (``functools.wraps``:
    the decorated function is its ``__wrapped__``).
    """
    func = getattr(actor, "fn", None)
    for _ in range(4):  # a few layers of functools.wraps at most
        if func is None:
            return None
        spec = spec_of(func)
        if spec is not None:
            return spec
        func = getattr(func, "__wrapped__", None)
    return None


def _actor_of(broker: Any, message: Any) -> Any:
    actors = getattr(broker, "actors", None)
    return actors.get(message.actor_name) if isinstance(actors, Mapping) else None


def _queue_of(message: Any) -> Queue:
    """Where a message waits: its queue (not the delay queue a delayed message passes through)."""
    from dramatiq.common import q_name

    name = message.queue_name
    return waiting_in(q_name(name) if isinstance(name, str) else None)


def _call_of(message: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = message.args, message.kwargs
    return (tuple(args) if isinstance(args, (tuple, list)) else (),
            dict(kwargs) if isinstance(kwargs, Mapping) else {})


@guarded("the Dramatiq before_enqueue hook")
def _on_enqueue(broker: Any, message: Any) -> None:
    options = message.options
    message_id = message.message_id
    if not isinstance(options, dict):
        return
    running = _running.get(message_id)
    if running is not None and is_live_here(running):
        # The message running here is sent again (Retries, from the worker
        # thread, inside the handling of the actor's exception): the job goes
        # back to its queue now, before any worker can run the next attempt,
        # and the message carries the job as it is now (its children so far).
        exc = sys.exc_info()[1]
        retries = options.get("retries", 0)
        requeue(running, reason=type(exc).__name__ if exc is not None else None,
                queue=_queue_of(message),
                next_attempt=retries + 1 if _is_count(retries) else None)
        options[CARRIER_KEY] = encode_job(running)
        _resending.add(message_id, running)
        return
    if options.get(CARRIER_KEY):
        return  # carrying its job already: a delayed message coming due
    spec = _spec_of_actor(_actor_of(broker, message))
    if spec is None or not isinstance(message_id, str):
        return
    args, kwargs = _call_of(message)
    job = prepare(spec, args, kwargs, job_id=message_id, queue=_queue_of(message))
    options[CARRIER_KEY] = carrier_of(job)[CARRIER_KEY]
    # Started once the broker has the message (after_enqueue): a send that
    # fails (the broker is down) makes no job.
    _sending.add(message_id, job)


@guarded("the Dramatiq after_enqueue hook")
def _on_enqueued(broker: Any, message: Any) -> None:
    message_id = message.message_id
    if _resending.pop(message_id) is not None:
        return  # the retry is out: the next attempt resumes the job
    job = _sending.pop(message_id)
    if job is not None:
        start_prepared(job)


# -- running ------------------------------------------------------------------------------


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _max_attempts(broker: Any, actor: Any, message: Any) -> int | None:
    """How many attempts Dramatiq makes at most, as ``Retries`` decides it (``None``: unknown)."""
    from dramatiq.middleware import Retries

    retries = next((m for m in broker.middleware if isinstance(m, Retries)), None)
    if retries is None:
        return 1  # no Retries middleware: a failure is final
    if actor.options.get("retry_when", retries.retry_when) is not None:
        return None  # a predicate decides, not a count
    limit = message.options.get("max_retries", actor.options.get("max_retries",
                                                                  retries.max_retries))
    return limit + 1 if _is_count(limit) else None


@guarded("the Dramatiq before_process_message hook")
def _on_process(broker: Any, message: Any) -> None:
    actor = _actor_of(broker, message)
    spec = _spec_of_actor(actor)
    message_id = message.message_id
    if spec is None or not isinstance(message_id, str):
        return
    retries = message.options.get("retries", 0)
    args, kwargs = _call_of(message)
    job = own(spec, carrier_in(message.options), args, kwargs, job_id=message_id,
              attempt=retries + 1 if _is_count(retries) else 1,
              max_attempts=_max_attempts(broker, actor, message))
    _running.add(message_id, job)


@guarded("the Dramatiq after_process_message hook")
def _on_processed(message: Any, exception: BaseException | None) -> None:
    job = _running.pop(message.message_id)
    if job is None:
        return
    if _resending.pop(message.message_id) is not None and exception is not None:
        # Sent back to its queue, but the broker did not take the message: no
        # attempt follows, this one's exception ends the job (not "Waiting for ...").
        job._message = "The retry could not be sent"
        job.__exit__(type(exception), exception, exception.__traceback__)
        return
    if is_live_here(job):
        if exception is not None:
            # Not sent again (that would have handed the job off): final.
            job.__exit__(type(exception), exception, exception.__traceback__)
            return
        if getattr(message, "failed", False):
            # A middleware rejected the message before the actor ran.
            job.fail(error=worker_error("CANCELLED", "the message was rejected before it ran"))
    job.__exit__(None, None, None)  # completes it unless it ended or was handed off


@guarded("the Dramatiq after_skip_message hook")
def _on_skipped(message: Any) -> None:
    job = _running.pop(message.message_id)
    if job is None:
        return
    if is_live_here(job):
        # Called inside Dramatiq's handling of the SkipMessage: it says why.
        skip = sys.exc_info()[1]
        reason = _printable(str(skip))[:_MAX_REASON] if skip is not None else ""
        job.fail(error=worker_error(
            "CANCELLED", "the message was skipped" + (f": {reason}" if reason else "")))
    job.__exit__(None, None, None)


@guarded("the Dramatiq worker exit hook")
def _on_exit() -> None:
    flush(_flush_timeout)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
