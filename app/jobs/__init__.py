"""Background jobs machinery: the Celery app, task base, broker, job rows and their service."""
