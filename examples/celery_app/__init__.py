"""A Celery app whose tasks are seenn jobs, and a FastAPI endpoint that returns their ids."""
