import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from governance.fastpath import IngestFastPath  # noqa: E402 - needs Django set up

# The activity-ingestion hot path is served beside Django (governance/fastpath.py); everything else is Django.
application = IngestFastPath(django_application)
