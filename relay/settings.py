"""Relay settings, read from the environment.

Two run modes share this file (docs/design.md section 2): with no environment set Relay runs
embedded (SQLite, in-process cache/channel layer, eager Celery); with DATABASE_URL and
REDIS_URL it runs in production mode on PostgreSQL and Redis.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from relay import redis_clients

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


DATABASE_URL = os.environ.get("DATABASE_URL", "")
# A Sentinel-managed primary instead of one server (relay/redis_clients.py): REDIS_URL then names
# only its database and password. Every Redis client Relay makes follows a failover.
try:
    REDIS_TARGET = redis_clients.Target.from_environment(os.environ)
except redis_clients.SentinelConfigError as _error:
    raise ImproperlyConfigured(str(_error)) from None
REDIS_URL = REDIS_TARGET.url
REDIS_SENTINELS = list(REDIS_TARGET.sentinels)
REDIS_SENTINEL_MASTER = REDIS_TARGET.master
REDIS_SENTINEL_PASSWORD = REDIS_TARGET.sentinel_password
EMBEDDED = not DATABASE_URL and not REDIS_URL

# The development key is public; production refuses to start with it (see the check below).
DEV_SECRET_KEY = "relay-insecure-development-key-do-not-use-in-production"  # noqa: S105 (public on purpose)
SECRET_KEY = os.environ.get("SECRET_KEY", DEV_SECRET_KEY)
DEBUG = env_bool("DEBUG", default=EMBEDDED)

if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured("Set SECRET_KEY: Relay refuses to run with DEBUG off on the development key.")
if not EMBEDDED and DEBUG and not env_bool("RELAY_ALLOW_DEBUG_IN_PRODUCTION"):
    raise ImproperlyConfigured(
        "DEBUG is on with DATABASE_URL/REDIS_URL set: production refuses to start in debug mode."
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "accounts.admin_config.RelayAdminConfig",  # django.contrib.admin on Relay's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "channels",
    "django_prometheus",
    "accounts",
    "audit",
    "agents",
    "billing",
    "training",
    "relay.observability",
]

# Django's own middleware with its hooks run on the event loop (relay/eventloop/inline.py).
# Django's deploy checks look for its classes by path; the subclasses are those classes and
# count as them, so `check --deploy` still checks HSTS, SSL redirect, CSRF and framing.
INLINE_MIDDLEWARE = {
    f"django.{path}": f"relay.eventloop.inline.{path.rsplit('.', 1)[1]}" for path in (
        "middleware.security.SecurityMiddleware", "contrib.sessions.middleware.SessionMiddleware",
        "middleware.common.CommonMiddleware", "middleware.csrf.CsrfViewMiddleware",
        "contrib.auth.middleware.AuthenticationMiddleware", "contrib.messages.middleware.MessageMiddleware",
        "middleware.clickjacking.XFrameOptionsMiddleware")
}


class MiddlewareList(list):
    def __contains__(self, path):
        return list.__contains__(self, path) or list.__contains__(self, INLINE_MIDDLEWARE.get(path))


MIDDLEWARE = MiddlewareList([
    # Metrics first and last (relay/observability/middleware.py: django-prometheus's own classes
    # would hop to the shared sync thread on every request under ASGI).
    "relay.observability.middleware.MetricsMiddleware",
    # Early, so every response (413s and redirects included) carries X-Request-ID.
    "audit.middleware.AuditContextMiddleware",
    "relay.eventloop.inline.SecurityMiddleware",
    "relay.security.SecurityHeadersMiddleware",  # CSP (no inline script), Permissions-Policy
    "relay.eventloop.static.AsyncWhiteNoiseMiddleware",
    "relay.eventloop.middleware.RequestSizeLimitMiddleware",
    # Right after the size check: an API key's read goes out while the rest of the chain runs.
    "accounts.middleware.KeyReadAheadMiddleware",
    "relay.eventloop.inline.SessionMiddleware",
    "relay.eventloop.inline.CommonMiddleware",
    "relay.eventloop.inline.CsrfViewMiddleware",
    "relay.eventloop.inline.AuthenticationMiddleware",
    "relay.eventloop.inline.MessageMiddleware",
    "relay.eventloop.inline.XFrameOptionsMiddleware",
    "relay.observability.middleware.ViewMetricsMiddleware",
    # Last, so it sees view errors first: lost Redis/database connections become 503s (relay/faults.py).
    "relay.faults.ServiceFaultMiddleware",
])

ROOT_URLCONF = "relay.urls"
WSGI_APPLICATION = "relay.wsgi.application"
ASGI_APPLICATION = "relay.asgi.application"

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

# --- Database -------------------------------------------------------------------------------
if DATABASE_URL:
    # A connection broken by a database restart fails one query (503), is marked errored and is
    # replaced at the next call (relay/eventloop/db.py closes errored connections). CONN_HEALTH_CHECKS
    # would ping before every ORM call of the hot path: measured ~9% of an instance's time.
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
                                                  conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS"))}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            # WAL lets readers run while one writer writes; IMMEDIATE avoids lock upgrades
            # failing with "database is locked" under concurrent writers.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
# Parameters sent apart from the SQL (psycopg's server-side binding) and statements prepared once per
# connection: measured less CPU per request in Relay (no quoting of values in Python) and in
# PostgreSQL (no parse and plan per call) (bench/README.md). Off behind a transaction-mode pooler
# that cannot keep prepared statements (DB_SERVER_SIDE_BINDING=0).
if DATABASES["default"]["ENGINE"].endswith("postgresql") and env_bool("DB_SERVER_SIDE_BINDING", True):
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
DATABASES["default"].setdefault("TEST", {})
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file (not :memory:) so that threads and subprocesses of a test see the same data; one per
    # test run, so that two runs on one machine do not share it.
    DATABASES["default"]["TEST"]["NAME"] = str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3")

# Production: django-prometheus's database and cache wrappers (query, connection and cache hit
# counters). The embedded mode keeps the plain backends.
RELAY_METRICS_ENABLED = env_bool("RELAY_METRICS_ENABLED", True)
if RELAY_METRICS_ENABLED and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- Cache, sessions, channel layer, Celery -------------------------------------------------
if REDIS_URL:
    _CACHE_LOCATION, _CACHE_SENTINEL = redis_clients.cache_location(REDIS_TARGET)
    CACHES = {
        "default": {
            # django-redis (with django-prometheus's counters), one client per process: relay/redis_cache.py.
            "BACKEND": ("relay.redis_cache.MeasuredCache" if env_bool("RELAY_METRICS_ENABLED", True)
                        else "relay.redis_cache.RedisCache"),
            "LOCATION": _CACHE_LOCATION,
            # Parallel test workers share one Redis: each gets its own key space.
            "KEY_PREFIX": os.environ.get("RELAY_CACHE_PREFIX", "relay") + os.environ.get("PYTEST_XDIST_WORKER", ""),
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
                **_CACHE_SENTINEL,
            },
        }
    }
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    CHANNEL_LAYERS = {
        # redis-py 8 times reads out after 5 s by default, exactly channels-redis's BZPOPMIN wait: the
        # read then failed and dropped every WebSocket idle for 5 s. The socket timeout must outlast it.
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                    "CONFIG": {"hosts": [redis_clients.channel_layer_host(REDIS_TARGET, socket_timeout=30,
                                                                          socket_connect_timeout=2)]}}
    }
    _BROKER_URL, _BROKER_OPTIONS = redis_clients.celery_broker(REDIS_TARGET)
    CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", _BROKER_URL)
    if _BROKER_OPTIONS and "CELERY_BROKER_URL" not in os.environ:
        CELERY_BROKER_TRANSPORT_OPTIONS = _BROKER_OPTIONS
    CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "relay"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = "UTC"
# Periodic work, once per cluster (one `celery beat`; relay/periodic.py also locks in Redis).
# The job bodies register from their apps' ready() (agents, billing and audit jobs.py).
CELERY_IMPORTS = ["relay.periodic"]
CELERY_BEAT_SCHEDULE = {
    "mark-interrupted-messages": {"task": "relay.mark_interrupted_messages", "schedule": 60.0},
    "expire-reservations": {"task": "relay.expire_reservations", "schedule": 60.0},
    "prune-idempotency-keys": {"task": "relay.prune_idempotency_keys", "schedule": 3600.0},
    "evaluate-budget-alerts": {"task": "relay.evaluate_budget_alerts", "schedule": 300.0},
    "audit-checkpoint": {"task": "relay.audit_checkpoint", "schedule": 86400.0},
}
# The audit chain head is signed this often: deleting the newest events is detected by verify_audit
# up to the latest checkpoint, so at most this many seconds of events are unprotected (0: never).
RELAY_AUDIT_CHECKPOINT_SECONDS = env_int("RELAY_AUDIT_CHECKPOINT_SECONDS", 300)
if RELAY_AUDIT_CHECKPOINT_SECONDS > 0:
    CELERY_BEAT_SCHEDULE["audit-head-checkpoint"] = {"task": "relay.audit_head_checkpoint",
                                                     "schedule": float(RELAY_AUDIT_CHECKPOINT_SECONDS)}

# --- Auth -----------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
    "accounts.admin_site.OrganizationAdminBackend",  # an organization admin's model permissions in /admin/
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
GUARDIAN_RAISE_403 = False
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous never gets object perms

# API key secrets are stored as HMAC-SHA256 under a versioned server secret. Add a new version
# and point RELAY_API_KEY_HASH_VERSION at it to rotate: keys hashed under older versions keep
# working (the version is stored with each key).
RELAY_API_KEY_HASH_SECRETS = {
    "1": os.environ.get("RELAY_API_KEY_HASH_SECRET", SECRET_KEY),
}
for _name, _value in os.environ.items():
    if _name.startswith("RELAY_API_KEY_HASH_SECRET_V"):
        RELAY_API_KEY_HASH_SECRETS[_name.removeprefix("RELAY_API_KEY_HASH_SECRET_V")] = _value
RELAY_API_KEY_HASH_VERSION = os.environ.get("RELAY_API_KEY_HASH_VERSION", "1")
if RELAY_API_KEY_HASH_VERSION not in RELAY_API_KEY_HASH_SECRETS:
    raise ImproperlyConfigured(f"RELAY_API_KEY_HASH_VERSION={RELAY_API_KEY_HASH_VERSION} has no secret.")

RELAY_LOGIN_RATE = os.environ.get("RELAY_LOGIN_RATE", "10/min")
# Bodies larger than this are refused with 413 before anything parses them.
RELAY_MAX_BODY_BYTES = env_int("RELAY_MAX_BODY_BYTES", 2 * 1024 * 1024)
RELAY_MAX_UPLOAD_BYTES = env_int("RELAY_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
# Ceilings on what an upload may become once parsed (agents/ingest.py, agents/tools/vision.py),
# enforced while parsing: decoded bytes (one PDF content stream, and all pages together, a stream
# shared by N pages counting N times) and extracted characters get 413, parse time 422.
RELAY_MAX_STREAM_BYTES = env_int("RELAY_MAX_STREAM_BYTES", 4 * 1024 * 1024)
RELAY_MAX_DECODED_BYTES = env_int("RELAY_MAX_DECODED_BYTES", 64 * 1024 * 1024)
RELAY_MAX_EXTRACTED_CHARS = env_int("RELAY_MAX_EXTRACTED_CHARS", 5_000_000)
RELAY_MAX_PARSE_SECONDS = env_int("RELAY_MAX_PARSE_SECONDS", 20)
RELAY_MAX_IMAGE_PIXELS = env_int("RELAY_MAX_IMAGE_PIXELS", 40_000_000)
# Heavy work (sandboxed code, document ingestion, image analysis; agents/heavy.py) runs in slots:
# RELAY_HEAVY_SLOTS per host (shared by the Relay processes of one RELAY_HEAVY_HOST, default the
# hostname) and RELAY_HEAVY_PER_USER per user across the cluster; beyond them 429 `busy`.
RELAY_HEAVY_SLOTS = env_int("RELAY_HEAVY_SLOTS", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count() or 1)
RELAY_HEAVY_PER_USER = env_int("RELAY_HEAVY_PER_USER", 1)
RELAY_HEAVY_LEASE_SECONDS = env_int("RELAY_HEAVY_LEASE_SECONDS", 120)
RELAY_HEAVY_HOST = os.environ.get("RELAY_HEAVY_HOST", "")
DATA_UPLOAD_MAX_MEMORY_SIZE = RELAY_MAX_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = RELAY_MAX_BODY_BYTES

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.APIKeyAuthentication",
        "accounts.authentication.BearerJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.RequiresPermission"],
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.APIKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"login": RELAY_LOGIN_RATE},
    "DEFAULT_PARSER_CLASSES": [
        "relay.api.parsers.BoundedJSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "relay.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "accounts.schema.RelayAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "relay.api.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("RELAY_JWT_ACCESS_MINUTES", 15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env_int("RELAY_JWT_REFRESH_DAYS", 7)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": True,
    "SIGNING_KEY": os.environ.get("RELAY_JWT_SIGNING_KEY", SECRET_KEY),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Relay API",
    "DESCRIPTION": (
        "Run AI agents in production: streaming answers, budgets, permissions and an audit trail. "
        "Authenticate with `Authorization: Bearer rk_...` (API key), a JWT from "
        "`/api/v1/auth/token/`, or the browser session. Errors are "
        '`{"error": {"code": "...", "message": "..."}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"MessageStatusEnum": "agents.models.Message.Status"},
}

# --- Internationalization, static -----------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_ROOT = Path(os.environ.get("RELAY_MEDIA_ROOT", BASE_DIR / "media"))
# Built training datasets (training/storage.py): one JSONL file per version.
RELAY_TRAINING_DIR = Path(os.environ.get("RELAY_TRAINING_DIR", MEDIA_ROOT / "training"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Not the manifest storage: it makes every page fail until collectstatic has run.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from static/ too, so a fresh checkout works without collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Security -------------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
RELAY_CSP = os.environ.get("RELAY_CSP", "")  # empty: relay/security.py's strict default policy
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the console's JS reads it to send X-CSRFToken
# Behind nginx terminating TLS; RELAY_BEHIND_TLS=0 for a plain-HTTP lab setup.
RELAY_BEHIND_TLS = env_bool("RELAY_BEHIND_TLS", default=not DEBUG)
if RELAY_BEHIND_TLS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("RELAY_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("RELAY_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("RELAY_HSTS_PRELOAD", True)

# --- Relay ----------------------------------------------------------------------------------
RELAY_REQUIRE_SERVICES = env_bool("RELAY_REQUIRE_SERVICES")
RELAY_ALLOW_UNSANDBOXED_CODE = env_bool("RELAY_ALLOW_UNSANDBOXED_CODE")
RELAY_AUDIT_PROMPTS = env_bool("RELAY_AUDIT_PROMPTS")
# How many reverse proxies in front of Relay append to X-Forwarded-For (nginx: 1).
RELAY_TRUSTED_PROXY_COUNT = env_int("RELAY_TRUSTED_PROXY_COUNT", 0)
RELAY_METRICS_TOKEN = os.environ.get("RELAY_METRICS_TOKEN", "")
RELAY_LLM_BASE_URL = os.environ.get("RELAY_LLM_BASE_URL", "")
RELAY_LLM_API_KEY = os.environ.get("RELAY_LLM_API_KEY", "")
RELAY_LLM_MODELS = env_list("RELAY_LLM_MODELS")
# Environment variables a deployment's `api_key_env` may name besides RELAY_LLM_API_KEY and
# RELAY_UPSTREAM_KEY_* (agents.models.upstream_key_env_allowed): any other variable, such as
# SECRET_KEY, is never sent upstream.
RELAY_UPSTREAM_KEY_ENVS = env_list("RELAY_UPSTREAM_KEY_ENVS")
RELAY_DRAIN_SECONDS = env_int("RELAY_DRAIN_SECONDS", 30)
# A message still "running" after this long belongs to a dead instance (agents/jobs.py);
# by default the reservation TTL, which already bounds the longest run.
RELAY_INTERRUPTED_AFTER_SECONDS = env_int("RELAY_INTERRUPTED_AFTER_SECONDS",
                                          env_int("RELAY_BUDGET_RESERVATION_TTL", 900))
# Audit events older than this many days are pruned daily behind a signed checkpoint (0: keep all).
RELAY_AUDIT_RETENTION_DAYS = env_int("RELAY_AUDIT_RETENTION_DAYS", 0)
# Threads running ORM work for async views (each holds one database connection).
RELAY_DB_THREADS = env_int("RELAY_DB_THREADS", 8)
# The hot path's plain-SQL writes (a run's opening) on the event loop's own PostgreSQL connection,
# not a DB thread (relay/eventloop/pg.py); 0 sends them to the threads like the ORM's.
RELAY_DB_LOOP_WRITES = env_bool("RELAY_DB_LOOP_WRITES", True)
# A request with an API key whose copy is cached is admitted on the event loop (accounts.admission.admit_on_loop).
RELAY_ADMIT_ON_LOOP = env_bool("RELAY_ADMIT_ON_LOOP", True)
# ...and its view's prelude there too, when it needs no database (a DB thread otherwise).
RELAY_PRELUDE_ON_LOOP = env_bool("RELAY_PRELUDE_ON_LOOP", True)
# A run's closing commit (held in the ledger meanwhile) waits behind the next model calls of its
# process (relay.eventloop.later): until none has been before its answer for QUIET ms (a stream
# past its first token lets it go at once), or HOLD ms at most; then all that waited commits as
# one batch. HOLD 0: never held.
RELAY_CLOSING_QUIET_MS = env_int("RELAY_CLOSING_QUIET_MS", 3)
RELAY_CLOSING_HOLD_MS = env_int("RELAY_CLOSING_HOLD_MS", 50)
# Budgets: a reservation outlives this many seconds only if its instance died (then it is freed);
# keep it above the longest run. Threshold alerts are also POSTed to the webhook when set.
RELAY_BUDGET_RESERVATION_TTL = env_int("RELAY_BUDGET_RESERVATION_TTL", 900)
RELAY_BUDGET_WEBHOOK_URL = os.environ.get("RELAY_BUDGET_WEBHOOK_URL", "")
# Budgets one organization may hold (billing.actions.budgets): each is a series of
# budget_usage_ratio, so no organization can crowd the others out of the budget alerts.
RELAY_MAX_BUDGETS_PER_ORGANIZATION = env_int("RELAY_MAX_BUDGETS_PER_ORGANIZATION", 100)
# Under Sentinel a ledger write counts once this many replicas acknowledged it (WAIT, up to
# RELAY_LEDGER_WAIT_MS; docs/design.md section 7), and a settlement that finds the primary gone
# is retried for RELAY_LEDGER_RETRY_SECONDS, long enough for a promotion. 0: neither (one server).
RELAY_LEDGER_REPLICAS = env_int("RELAY_LEDGER_REPLICAS", 1 if REDIS_SENTINELS else 0)
RELAY_LEDGER_WAIT_MS = env_int("RELAY_LEDGER_WAIT_MS", 250)
RELAY_LEDGER_RETRY_SECONDS = env_int("RELAY_LEDGER_RETRY_SECONDS", 15 if REDIS_SENTINELS else 0)
# The embedded engine computes its answer at once; pacing its tokens shows them streaming.
RELAY_LOCAL_TOKEN_DELAY_MS = env_int("RELAY_LOCAL_TOKEN_DELAY_MS", 8)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("RELAY_LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
