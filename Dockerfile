# Corral's production image. The web process (uvicorn), the Celery worker and Celery beat all run from it:
# docker-compose.yml and the Helm chart (deploy/helm/corral) only change the command.
# .ci/image-proof.py builds and starts this image's layout without a Docker engine on every CI run.
#
# The official python:3.11-slim-bookworm image, pinned by the digest of its multi-platform index (Python
# 3.11.16 on Debian 12), so every build starts from the same bytes. To move to a newer one, on a machine
# with Docker:  docker buildx imagetools inspect python:3.11-slim-bookworm   (prints "Digest: sha256:...")
# and put that digest here; both stages use it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- build: the dependencies from the hashed lock, the code, the collected static files -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock /tmp/requirements.lock
# --require-hashes: every package, dependencies of dependencies included, must be in the lock with its hash
# or pip refuses; --only-binary: nothing is compiled, so the build needs no compiler.
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements.lock
WORKDIR /app
COPY manage.py ./
COPY config ./config
COPY access ./access
COPY licensing ./licensing
COPY governance ./governance
COPY inference ./inference
COPY portal ./portal
COPY templates ./templates
COPY scripts/healthcheck.py ./scripts/healthcheck.py
# The production settings serve static files through whitenoise's manifest storage, which needs the
# manifest collectstatic writes (without it every page is a 500). The settings refuse production without a
# key and host names: throwaway ones, set for this command only, never part of the image.
RUN CORRAL_ENV=production ALLOWED_HOSTS=build.invalid CORRAL_VAR_DIR=/tmp/corral-build STATIC_ROOT=/app/staticfiles \
    SECRET_KEY=collectstatic-only-signs-nothing-and-is-not-kept-in-the-image-0123456789 \
    python manage.py collectstatic --noinput \
    && python -m compileall -q config access licensing governance inference portal

# --- runtime: the interpreter, the venv and /app; no compiler, no pip cache; runs as an unprivileged user ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH PYTHONPATH=/app \
    CORRAL_VAR_DIR=/var/lib/corral STATIC_ROOT=/app/staticfiles UVICORN_HOST=0.0.0.0 UVICORN_PORT=8000 \
    UVICORN_TIMEOUT_KEEP_ALIVE=75
RUN groupadd --system --gid 10001 corral \
    && useradd --system --uid 10001 --gid corral --home-dir /var/lib/corral --no-create-home \
       --shell /usr/sbin/nologin corral \
    && install -d -o corral -g corral -m 0750 /var/lib/corral
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 10001:10001
EXPOSE 8000
# The web process's health. Django answers 400 to a Host header outside ALLOWED_HOSTS, 127.0.0.1 included
# unless listed, so the check sends the first allowed host name (scripts/healthcheck.py). docker-compose.yml
# gives the worker and beat checks of their own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/scripts/healthcheck.py", "web"]
# Host and port come from UVICORN_HOST and UVICORN_PORT, so the health check follows a changed port. An idle
# keep-alive connection lives 75 s (UVICORN_TIMEOUT_KEEP_ALIVE), longer than the 60 s a load balancer or ingress
# keeps its upstream connections: with uvicorn's 5 s default the server closes a connection just as the proxy
# reuses it, and that request fails with a dropped connection (a 502 at the proxy).
CMD ["uvicorn", "config.asgi:application", "--proxy-headers"]
