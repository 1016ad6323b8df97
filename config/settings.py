"""Modelgate settings: one file, everything from the environment.

The defaults are the embedded profile (SQLite, a filesystem broker and artifacts under ``var/``), so
that ``make run`` needs no server. Setting ``DATABASE_URL``, ``CELERY_BROKER_URL`` and
``ARTIFACT_STORE=s3://bucket/prefix`` moves the same code onto PostgreSQL, Redis and S3.
Any variable may also come from ``NAME_FILE`` (a path), as Docker and Kubernetes secrets do.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# FileAwareEnv: any variable may come from a file named by NAME_FILE (Docker and Kubernetes secrets).
env = environ.FileAwareEnv()
if (BASE_DIR / ".env").exists():
    env.read_env(str(BASE_DIR / ".env"))

VAR_DIR = Path(env.str("MODELGATE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def secret(name: str, default: str = "") -> str:
    """Read ``NAME`` (or the file named by ``NAME_FILE``), failing loudly on an unreadable file."""
    try:
        return env.str(name, default=default).strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE cannot be read: {exc}") from exc


DEBUG = env.bool("DEBUG", default=False)
# The production profile (``MODELGATE_PROFILE=production``) refuses to start without a real secret key
# and turns on the secure-cookie and HSTS settings that ``check --deploy`` asks for.
PROFILE = env.str("MODELGATE_PROFILE", default="embedded")
if PROFILE not in {"embedded", "production"}:
    raise ImproperlyConfigured(f"MODELGATE_PROFILE must be 'embedded' or 'production', not {PROFILE!r}")
SECRET_KEY = secret("SECRET_KEY")
if not SECRET_KEY:
    if PROFILE == "production":
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required in the production profile")
    SECRET_KEY = "embedded-insecure-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"])
PUBLIC_URL = env.str("PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[PUBLIC_URL])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "registry",
    "lifecycle",
    "workers",
    "serving",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "registry.api.middleware.RejectNulMiddleware",
    "registry.api.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'modelgate.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock up front, so concurrent pushes queue on it instead of
    # failing with "database is locked" when a read transaction tries to upgrade to a write.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "ui:model-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

# --- Artifacts -------------------------------------------------------------------------------------
# ARTIFACT_STORE is a directory, or s3://bucket/prefix (boto3 through django-storages; AWS_ENDPOINT_URL
# points it at MinIO or any S3-compatible store).
ARTIFACT_STORE = env.str("ARTIFACT_STORE", default=str(VAR_DIR / "artifacts"))
AWS_ENDPOINT_URL = env.str("AWS_ENDPOINT_URL", default="") or None
AWS_REGION = env.str("AWS_REGION", default=env.str("AWS_DEFAULT_REGION", default="us-east-1"))
# Uploads larger than this are refused with 413 (bytes; default 4 GiB).
MAX_ARTIFACT_BYTES = env.int("MAX_ARTIFACT_BYTES", default=4 * 1024**3)
MAX_DATASET_BYTES = env.int("MAX_DATASET_BYTES", default=4 * 1024**3)
# Direct uploads (S3 only): clients send large artifacts straight to the bucket by presigned multipart
# upload. The URLs are signed for AWS_PUBLIC_ENDPOINT_URL when clients reach S3 by another host than
# this process does (default: AWS_ENDPOINT_URL, or AWS itself).
AWS_PUBLIC_ENDPOINT_URL = env.str("AWS_PUBLIC_ENDPOINT_URL", default="") or None
DIRECT_UPLOAD_PART_BYTES = env.int("DIRECT_UPLOAD_PART_BYTES", default=16 * 1024**2)
DIRECT_UPLOAD_URL_SECONDS = env.int("DIRECT_UPLOAD_URL_SECONDS", default=6 * 3600)
# Pending direct uploads older than this are aborted by the maintenance sweep (their parts dropped).
DIRECT_UPLOAD_STALE_SECONDS = env.int("DIRECT_UPLOAD_STALE_SECONDS", default=24 * 3600)
# Uploads stream to a temporary file chunk by chunk and are hashed on the way; nothing is held whole.
FILE_UPLOAD_HANDLERS = ["registry.uploads.HashingUploadHandler"]
FILE_UPLOAD_TEMP_DIR = env.str("FILE_UPLOAD_TEMP_DIR", default="") or None
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2  # non-file fields, e.g. the metadata JSON
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200

# --- Celery ----------------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        # kombu keeps exchange bindings in ./control unless told otherwise; keep them under var/.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    # Conversions can run for many minutes; a shorter visibility timeout would redeliver them mid-run.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=2 * 3600),
    }
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=4.0)
# The beat schedule: the reconciler re-enqueues pipeline work whose task was lost.
CELERY_BEAT_SCHEDULE = {
    "reconcile-pipeline": {
        "task": "workers.tasks.reconcile_pipeline",
        "schedule": env.float("MODELGATE_RECONCILE_SECONDS", default=60.0),
    },
    "reconcile-exports": {
        "task": "workers.exports.reconcile_exports",
        "schedule": env.float("MODELGATE_RECONCILE_SECONDS", default=60.0),
    },
    "approval-timeouts": {
        "task": "workers.approvals.expire_approvals",
        "schedule": env.float("MODELGATE_RECONCILE_SECONDS", default=60.0),
    },
    "shadow-evaluation": {
        "task": "workers.shadow.evaluate_shadows",
        "schedule": env.float("MODELGATE_SHADOW_SECONDS", default=30.0),
    },
    "retirement-sweep": {
        "task": "workers.maintenance.retirement_sweep",
        "schedule": env.float("MODELGATE_RETIREMENT_SECONDS", default=3600.0),
    },
    "audit-seal": {
        "task": "workers.maintenance.audit_seal",
        "schedule": env.float("MODELGATE_AUDIT_SEAL_SECONDS", default=60.0),
    },
    "orphan-sweep": {
        "task": "workers.maintenance.orphans_sweep",
        "schedule": env.float("MODELGATE_ORPHAN_SWEEP_SECONDS", default=24 * 3600.0),
    },
    "direct-upload-sweep": {
        "task": "workers.maintenance.direct_uploads_expire",
        "schedule": env.float("MODELGATE_DIRECT_UPLOAD_SWEEP_SECONDS", default=3600.0),
    },
    "webhook-retries": {
        "task": "workers.approvals.retry_webhooks",
        "schedule": env.float("MODELGATE_WEBHOOK_RETRY_SECONDS", default=15.0),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Lifecycle -------------------------------------------------------------------------------------
# A claimed pipeline step older than this is considered lost (its worker died) and is re-enqueued.
MODELGATE_TASK_LEASE_SECONDS = env.int("MODELGATE_TASK_LEASE_SECONDS", default=20 * 60)
# A version whose pipeline step was started this many times without finishing is rejected rather than
# requeued forever (a model that kills its worker every time).
MODELGATE_MAX_TASK_ATTEMPTS = env.int("MODELGATE_MAX_TASK_ATTEMPTS", default=3)
# How soon a step that failed with an unexpected error is handed out again.
MODELGATE_RETRY_DELAY_SECONDS = env.int("MODELGATE_RETRY_DELAY_SECONDS", default=60)
# How long a registered version may wait for its first task before the reconciler enqueues it again.
# A blob no record names is deleted once it is older than this: it covers a push between storing its
# bytes and committing its version (lifecycle/orphans.py).
MODELGATE_ORPHAN_GRACE_HOURS = env.float("MODELGATE_ORPHAN_GRACE_HOURS", default=24.0)
# A shadow run's evaluation claimed longer ago than this is presumed lost (its worker died) and is taken
# over by the next wake-up; each task folds for at most 20 s, so this stays well above that.
MODELGATE_SHADOW_LEASE_SECONDS = env.float("MODELGATE_SHADOW_LEASE_SECONDS", default=120.0)
MODELGATE_SHADOW_CHECKPOINT_SECONDS = env.float("MODELGATE_SHADOW_CHECKPOINT_SECONDS", default=2.0)
MODELGATE_RECONCILE_GRACE_SECONDS = env.int("MODELGATE_RECONCILE_GRACE_SECONDS", default=60)
MODELGATE_GATE_TIME_LIMIT = env.int("MODELGATE_GATE_TIME_LIMIT", default=15 * 60)
# Limits of each task that opens an uploaded model (workers/limits.py); 0 disables one.
MODELGATE_TASK_MEMORY_MB = env.int("MODELGATE_TASK_MEMORY_MB", default=6144)
MODELGATE_TASK_CPU_SECONDS = env.int("MODELGATE_TASK_CPU_SECONDS", default=30 * 60)
# Decoded datasets on the gates worker's disk (lifecycle/dataset_cache.py): parsed once per host, then
# memory-mapped by every later evaluation. Least recently used entries go past the bound; 0 turns it off.
MODELGATE_DATASET_CACHE_DIR = env.str(
    "MODELGATE_DATASET_CACHE_DIR", default=str(VAR_DIR / "cache" / "datasets")
)
MODELGATE_DATASET_CACHE_MB = env.int("MODELGATE_DATASET_CACHE_MB", default=4096)

# How long a web process trusts a token it has already checked (0: check every request). A token
# revoked elsewhere stops working in this process at the latest after this many seconds.
MODELGATE_TOKEN_CACHE_SECONDS = env.float("MODELGATE_TOKEN_CACHE_SECONDS", default=5.0)

# The retirement sweep (warn, retire, purge unused versions; see docs/retirement.md). It is idempotent,
# so running it hourly only acts once a day per version. false switches it off everywhere.
MODELGATE_RETIREMENT_ENABLED = env.bool("MODELGATE_RETIREMENT_ENABLED", default=True)

# --- Serving ---------------------------------------------------------------------------------------
# Sampled requests and prediction counts are buffered in the web process and written in one bulk
# insert this often (or sooner when the buffer holds CAPTURE_BATCH requests).
MODELGATE_CAPTURE_FLUSH_SECONDS = env.float("MODELGATE_CAPTURE_FLUSH_SECONDS", default=0.5)
MODELGATE_CAPTURE_BATCH = env.int("MODELGATE_CAPTURE_BATCH", default=500)
# While the database is away the buffer keeps at most this many requests, then drops the oldest.
MODELGATE_CAPTURE_MAX_BUFFER = env.int("MODELGATE_CAPTURE_MAX_BUFFER", default=50_000)
MODELGATE_PREDICT_MAX_ROWS = env.int("MODELGATE_PREDICT_MAX_ROWS", default=10_000)
MODELGATE_SERVING_CACHE_SIZE = env.int("MODELGATE_SERVING_CACHE_SIZE", default=4)

# --- API -------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "registry.auth.BearerOrTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "registry.api.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "registry.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# Tokens are stored hashed (knox), expire after TOKEN_TTL_DAYS (0: never) and can be revoked one by one.
TOKEN_TTL_DAYS = env.int("TOKEN_TTL_DAYS", default=90)
REST_KNOX = {
    "TOKEN_TTL": timedelta(days=TOKEN_TTL_DAYS) if TOKEN_TTL_DAYS else None,
    "AUTO_REFRESH": False,
    "TOKEN_LIMIT_PER_USER": None,
    "TOKEN_PREFIX": "mg_",  # recognisable in logs and by secret scanners
}
KNOX_TOKEN_MODEL = "registry.ApiToken"
# knox's own migration creates its (swapped-out) token table anyway, with a foreign key to users that
# nothing else knows about; with no migrations for knox that table is never created.
MIGRATION_MODULES = {"knox": None}
SPECTACULAR_SETTINGS = {
    "TITLE": "Modelgate API",
    "DESCRIPTION": "Model registry with a CI/CD lifecycle.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # The docs page uses the vendored swagger-ui from drf-spectacular-sidecar: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several resources have a "status" field with other choices (exports, shadows): name the version's.
    "ENUM_NAME_OVERRIDES": {"VersionStatusEnum": "registry.models.VersionStatus"},
}

# --- Slack -----------------------------------------------------------------------------------------
SLACK_BOT_TOKEN = secret("SLACK_BOT_TOKEN")
SLACK_SIGNING_SECRET = secret("SLACK_SIGNING_SECRET")
SLACK_API_URL = env.str("SLACK_API_URL", default="https://slack.com/api/")

# --- Webhooks --------------------------------------------------------------------------------------
MODELGATE_WEBHOOK_BACKOFF_SECONDS = env.float("MODELGATE_WEBHOOK_BACKOFF_SECONDS", default=5.0)
MODELGATE_WEBHOOK_TIMEOUT_SECONDS = env.float("MODELGATE_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
MODELGATE_WEBHOOK_MAX_ATTEMPTS = env.int("MODELGATE_WEBHOOK_MAX_ATTEMPTS", default=8)

# --- Security --------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
if PROFILE == "production":
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)  # hard to undo: opt in
    if not SECURE_HSTS_PRELOAD:
        # Joining the browsers' preload list is the domain owner's decision (it covers every subdomain
        # and takes months to leave), not the registry's: W021 only says it was not taken.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
