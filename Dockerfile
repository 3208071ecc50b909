# PAR reward service image: one recipe, two variants chosen with a build argument.
#
#   docker build -t par-reward:gpu .                           # CUDA runtime + CUDA torch
#   docker build --build-arg VARIANT=cpu -t par-reward:cpu .   # slim Python + CPU torch
#
# Run it with the reward model mounted read-only under /models, Redis and tokens from the
# environment (every setting is a PAR_* variable, see service/config.py):
#
#   docker run --gpus 1 -p 8000:8000 -v /srv/models:/models:ro \
#     -e PAR_MODEL=/models/my-rm -e PAR_REDIS_URL=redis://:PASSWORD@redis:6379/0 \
#     -e PAR_ADMIN_TOKEN=... par-reward:gpu
#
# Layers, from the least to the most often changed: base, torch (pinned, gigabytes), the
# other dependencies (from pyproject.toml), the service source (kilobytes).

ARG VARIANT=gpu
# The CUDA image and torch's CUDA wheel index go together: change both, or neither.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG TORCH_CUDA=cu128

# ---- bases: the only difference between the variants --------------------------------------
# Both give Python 3.12 at /usr/bin/python3 or /usr/local/bin/python3, and TORCH_INDEX_URL.
FROM python:3.12-slim-bookworm AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${CUDA_IMAGE} AS base-gpu
ARG TORCH_CUDA
# Versions come with the pinned CUDA image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}

# ---- build: a virtualenv with everything, copied whole into the runtime stage ---------------
# base-${VARIANT} names a stage above, not an image to tag (hadolint cannot tell).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
# Keep equal to the torch pin in pyproject.toml (tests/deploy checks it).
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
    && pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"
WORKDIR /src
# Dependencies before the source: editing service/ reuses every layer above.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > requirements.txt \
    && pip install -r requirements.txt
COPY service ./service
RUN pip install --no-deps .

# ---- runtime --------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PAR_HOST=0.0.0.0 \
    PAR_PORT=8000 \
    PAR_MODEL=/models/reward-model \
    PAR_MODEL_ROOTS='["/models"]' \
    PAR_CACHE_DIR=/home/par/.cache/par-reward \
    HF_HOME=/home/par/.cache/huggingface
# A fixed, unprivileged uid (Kubernetes' runAsNonRoot can check a number, not a name).
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin par \
    && mkdir -p /models
USER 10001:10001
WORKDIR /home/par
EXPOSE 8000
# Liveness only (the process answers); readiness (/readyz: model loaded) is the orchestrator's
# business. urllib raises on any non-2xx answer or timeout, which exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PAR_PORT', '8000'), timeout=4)"]
# SIGTERM: uvicorn stops accepting, drains in-flight requests, exits 0 (service/__main__.py).
STOPSIGNAL SIGTERM
ENTRYPOINT ["par-reward"]
