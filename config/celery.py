"""The Celery application; tasks are discovered in each app's tasks.py."""

import logging
import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("corral")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def serve_metrics(**_: object) -> object:
    """With WORKER_METRICS_PORT, the worker's main process serves the metrics of its pool (docs/operations.md)."""
    from django.conf import settings

    port, token = settings.WORKER_METRICS_PORT, settings.METRICS_TOKEN
    if not port:
        return None
    if not token:
        logging.getLogger(__name__).warning("WORKER_METRICS_PORT is set but METRICS_TOKEN is not: no metrics served")
        return None
    from config.observability import serve_worker_metrics

    return serve_worker_metrics(port, token)
