# syntax=docker/dockerfile:1
#
# Modelgate: one image for every process. The default command serves the web app and the API
# (gunicorn); the same image runs the Celery workers and beat with another command:
#
#   docker build -t modelgate .
#   docker run -p 8000:8000 --env-file .env modelgate                            # web
#   docker run --env-file .env modelgate celery -A config worker -Q gates -n gates@%h -l INFO
#   docker run --env-file .env modelgate celery -A config beat -l INFO           # exactly one
#
# Everything is configured by environment variables (docs/configuration.md); docker-compose.yml
# shows a whole deployment and docs/operations.md how to run it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: the virtualenv ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A compiler, only for a dependency that ships no wheel for this platform; none of it reaches the
# final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The lock file alone first, so that a change to the code does not reinstall TensorFlow.
COPY requirements/lock.txt /tmp/requirements/lock.txt
RUN pip install --upgrade pip \
 && pip install -r /tmp/requirements/lock.txt

# The CLI CI uses (`modelgate`), handy inside the image too. Its dependencies are in the lock.
COPY client /tmp/client
RUN pip install --no-deps /tmp/client \
 && pip check

# --- node: the JS packages of the TF.js parity check (@tensorflow/tfjs, pure JS), from the lock file ---
# and the lineage graph's browser libraries, copied into static/vendor/ (gitignored in the repository).
FROM node:20-bookworm-slim AS node
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts --omit=dev
COPY scripts/vendor_static.sh scripts/
RUN sh scripts/vendor_static.sh

# --- final: the runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS final

# - nodejs: Debian's Node.js (18 on bookworm). The export branch checks the TF.js conversion by
#   loading it with @tensorflow/tfjs (pure JS) in Node, so the workers that run exports need it.
#   npm is not installed: node_modules comes from the node stage, like the Python virtualenv.
# - tini: PID 1. It forwards signals to gunicorn or Celery and reaps the subprocesses (converters,
#   node) that the workers start.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 modelgate \
 && useradd --system --uid 10001 --gid modelgate --home-dir /home/modelgate --create-home \
        --shell /usr/sbin/nologin modelgate

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=config.settings \
    MODELGATE_VAR_DIR=/app/var \
    WEB_CONCURRENCY=4

COPY --from=builder /opt/venv /opt/venv
COPY --from=node /app/node_modules /app/node_modules

WORKDIR /app
# The code stays owned by root, so the processes cannot rewrite it; only var/ is theirs.
COPY . .
COPY --from=node /app/static/vendor/ static/vendor/

# Static files are collected into the image; whitenoise serves them. Importing the settings needs a
# SECRET_KEY: this one exists for this command only and is not part of the image's environment.
# That step's var/ goes to /tmp so that the real one is created afterwards, owned by the app user
# (with PostgreSQL, Redis and S3 configured, var/ holds only beat's schedule file).
RUN SECRET_KEY=collectstatic-only-not-a-secret MODELGATE_VAR_DIR=/tmp/collectstatic-var \
        python manage.py collectstatic --noinput --verbosity 0 \
 && rm -rf /tmp/collectstatic-var \
 && mkdir -p /app/var \
 && chown modelgate:modelgate /app/var

USER 10001:10001

EXPOSE 8000

# Liveness of the web process. In the production profile a plain-HTTP request is redirected to HTTPS
# (SECURE_SSL_REDIRECT), so the probe says it came through the TLS proxy, and it sends the host of
# PUBLIC_URL so that a restrictive ALLOWED_HOSTS accepts it. Workers and beat, which run the same
# image, replace this check (see docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.parse, urllib.request as r; host = urllib.parse.urlsplit(os.environ.get('PUBLIC_URL') or 'http://localhost').netloc or 'localhost'; r.urlopen(r.Request('http://127.0.0.1:8000/healthz', headers={'Host': host, 'X-Forwarded-Proto': 'https'}), timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
# Uploads of several GiB stream through the web workers, hence the long timeout (as in the Procfile).
# WEB_CONCURRENCY sets the number of gunicorn workers.
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--timeout", "600", "--threads", "4", \
     "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
