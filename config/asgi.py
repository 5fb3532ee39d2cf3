import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from config.observability import ObservedApp  # noqa: E402
from governance.metering.fastpath import ACTIVITY_PATH, IngestFastPath  # noqa: E402 - needs Django set up
from inference.gateway.app import COMPLETION_PATHS, Gateway  # noqa: E402

# Two hot paths are served beside Django: the OpenAI-compatible gateway under /v1 (inference/gateway/) and
# activity ingestion (governance/metering/fastpath.py). Everything else is Django. The outermost layer gives every request
# an id and counts it by route and status (config/observability.py).
application = ObservedApp(Gateway(IngestFastPath(django_application)), gateway_paths=tuple(COMPLETION_PATHS),
                          activity=ACTIVITY_PATH)
