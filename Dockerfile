# The service's image: `docker build -t app .` (BuildKit: the RUN --mount cache needs it).
#
# Two stages: a builder that has uv and makes the virtual environment from uv.lock, and a
# runtime that gets only that environment (no uv, no compilers, no source tree). Base images
# are build arguments so that a machine without registry access can pass local ones; the
# defaults are the official images. With a stand-in base the Python may live in /usr/bin
# (Debian's) rather than /usr/local/bin (python:*): uv takes whichever `python3` PATH finds,
# and both stages use the same base, so the environment's interpreter link stays valid.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv

# Bytecode compiled now (the runtime's environment is read-only, and a cold start would
# otherwise compile every import). Copy mode: the cache is another filesystem (a mount).
# The base image's Python only: uv must never download one.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_NO_PROGRESS=1

# Behind a TLS-inspecting proxy or a private package mirror, `--build-arg UV_SYSTEM_CERTS=1`
# makes uv trust the base image's CA store instead of its bundled roots (the base must
# already trust that CA: nothing is added to the image here). UV_NATIVE_TLS is the older name,
# still accepted by uv 0.13. Unset (the default), they are not in the environment at all.
ARG UV_SYSTEM_CERTS
ARG UV_NATIVE_TLS

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when the lock changes. Exactly
# what uv.lock pins (--locked fails on a stale lock), without the dev group.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --no-install-project --no-editable

# Then the project itself, as a regular (non-editable) install: the package, its migrations
# and its static files end up in site-packages, so the image needs no source tree.
# uv leaves its lock file in the environment world-writable (mode 0666): the only thing in
# /opt/venv the app user could write. Nothing runs uv in the runtime image, so drop it.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable \
    && rm -f /opt/venv/.lock


FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric user (Kubernetes' runAsNonRoot can check a number, not a name). /data is
# for a volume (uploads, the outbox, beat's schedule): created here so that a named volume
# mounted on it starts out owned by the app user.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app \
    && mkdir /data \
    && chown 10001:10001 /data

# Owned by root, so the app user can read and run it but never change it.
COPY --from=builder /opt/venv /opt/venv

# APP_DATA_DIR: the only place the app writes to on its own. With PostgreSQL, Redis and
# SECRET_KEY set (production refuses a generated key anyway), nothing in it must survive a
# restart, so the default is under /tmp, which works with a read-only root and a tmpfs /tmp.
# Keep uploads (STORAGE_LOCAL_DIR or APP_DATA_DIR) on a volume, e.g. /data: see compose.yaml.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_DATA_DIR=/tmp/app \
    ENVIRONMENT=production

# An empty, root-owned working directory: settings also read a `.env` from here, and none
# is baked in (secrets come from the environment at run time).
WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Liveness of the API: stdlib only (nothing of the app is imported, so it costs ~30 ms), no
# proxy from the environment, and /health answers whatever the Host (ALLOWED_HOSTS does not
# apply to it). Workers and beat override this in compose.yaml with their liveness file.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/health', timeout=4)"]

# No init process in the image: compose.yaml runs every app container with `init: true`
# (Docker's tini reaps zombies and forwards signals), and Kubernetes has its own. Use
# `docker run --init` when running the image by hand. Installing tini here would need apt in
# the runtime stage and differs between the official and stand-in bases.
ENTRYPOINT ["app"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

# Labels last: a new revision changes metadata only, every layer above stays cached.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="app" \
      org.opencontainers.image.description="A production-grade FastAPI backend: API, Celery workers and beat (one image, see ENTRYPOINT app --help)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
