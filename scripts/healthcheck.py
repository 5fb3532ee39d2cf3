"""Container health checks for Corral's processes (the image's HEALTHCHECK, docker-compose.yml, the Helm chart).

    python scripts/healthcheck.py web               # GET /healthz on this container's uvicorn: 200 or exit 1
    python scripts/healthcheck.py beat [--max-age N] # beat wrote its schedule to the database in the last N s

web: Django answers 400 to any Host header outside ALLOWED_HOSTS, and 127.0.0.1 is not in it in production,
so the request carries the first allowed host name (read like the settings read it: ALLOWED_HOSTS or
ALLOWED_HOSTS_FILE). /healthz is exempt from the HTTPS redirect and reports the database, cache and broker.
Only the standard library is imported: the check runs every 30 s and must stay cheap.

beat: django-celery-beat's scheduler writes the last run time of the periodic tasks it sent to the database
every 3 minutes (celery's Scheduler.sync_every; the first time 3 minutes after it starts) and when it stops.
Beat sends a task every 10 s at least (reconcile-pool), so a newest last_run_at older than --max-age (default
600 s) means beat has stopped scheduling; give it a start period of 5 minutes. It is beat's own write: a
stopped worker does not make beat unhealthy.
The worker's check is Celery's own: celery -A config inspect ping --destination celery@$HOSTNAME.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
from pathlib import Path


def _setting(name: str) -> str:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, "")


def allowed_host() -> str:
    """A host name Django accepts: the first of ALLOWED_HOSTS, made concrete if it is a pattern."""
    hosts = [host.strip() for host in _setting("ALLOWED_HOSTS").split(",") if host.strip()]
    if not hosts:  # development settings allow localhost
        return "localhost"
    host = hosts[0]
    if host == "*":
        return "localhost"
    return host.lstrip(".")  # ".example.com" allows example.com and its subdomains


def check_web(timeout: float) -> int:
    port = int(os.environ.get("UVICORN_PORT") or 8000)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/healthz", headers={"Host": allowed_host()})
        response = connection.getresponse()
        body = response.read(2000).decode("utf-8", "replace")
    except OSError as exc:
        print(f"web: no answer on 127.0.0.1:{port}: {exc}")
        return 1
    finally:
        connection.close()
    print(f"web: /healthz {response.status} {body}")
    return 0 if response.status == 200 else 1


def check_beat(max_age: float) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db.models import Max
    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask

    last = PeriodicTask.objects.filter(enabled=True).aggregate(last=Max("last_run_at"))["last"]
    if last is None:
        print("beat: no periodic task has run yet")
        return 1
    age = (timezone.now() - last).total_seconds()
    print(f"beat: last scheduled run {age:.0f} s ago (at most {max_age:.0f} s)")
    return 0 if age <= max_age else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="process", required=True)
    web = sub.add_parser("web")
    web.add_argument("--timeout", type=float, default=4.0)
    beat = sub.add_parser("beat")
    beat.add_argument("--max-age", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.process == "web":
        return check_web(args.timeout)
    return check_beat(args.max_age)


if __name__ == "__main__":
    sys.exit(main())
