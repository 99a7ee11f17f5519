"""Worker queues: one job per task, from the moment it is enqueued to its end in a worker.

Each module hooks seenn into one queue library, which it imports only when its
``instrument()`` is called (install it with the extra of the same name, e.g.
``pip install "seenn[celery]"``):

* :mod:`seenn.integrations.celery`
* :mod:`seenn.integrations.rq`
* :mod:`seenn.integrations.dramatiq`
* :mod:`seenn.integrations.arq`

A task is tracked when its function carries ``@seenn.job(...)``. The job is
created ``queued`` when the task is enqueued, with the queue's own task id as
its id, resumed (never duplicated) where the task runs, kept as one job across
the queue's retries, and failed when the queue gives up or the worker dies.
See ``docs/integrations.md``.
"""
