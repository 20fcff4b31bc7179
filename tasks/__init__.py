"""Celery tasks of memory_worker, registered by ``memory_worker.celery_app``."""
