# Vigil images, one target per role; each carries only its role's packages, pinned with hashes in its lock
# file, requirements/<role>.txt (made from pyproject.toml's extras by `make lock`).
#   docker compose build                      (every role)
#   docker build --target worker -t vigil-worker .
# Targets: reader, router, worker (detection and classification), worker-gpu, registrator, api.
# Built by Docker Engine 20.10 and later with its own BuildKit: no `# syntax=` line, because that makes
# BuildKit fetch a frontend image from a registry, which an air-gapped site does not have.

# Any Debian-based image with python3 (3.11+) and its venv module; compose passes VIGIL_PYTHON_IMAGE.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- dependencies ----------------------------------------------------------------------------
# Each deps stage takes only its role's lock, so the slow layers (opencv, av, onnxruntime) are rebuilt
# when that lock changes, not on every code edit nor on another role's change. The project itself is not
# installed: the code runs from /app, where services/worker/manifest.py finds models/ next to it.
# No compiler or -dev packages: install-deps takes wheels only, and every locked package ships manylinux
# wheels for CPython 3.11.
# A site's package index and CA come in as build secrets (compose: VIGIL_PIP_CONF, VIGIL_PIP_CA), mounted
# only while pip runs, so neither lands in a layer; install-deps hands them to pip when they are given.
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CACHE_DIR=/pip-cache
# python3: Debian's own python3 has no `python` name; the venv below gives one to every later stage.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY scripts/docker-install-deps.sh /usr/local/bin/install-deps

FROM deps AS deps-reader
COPY requirements/reader.txt requirements/
RUN --mount=type=cache,target=/pip-cache --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    install-deps requirements/reader.txt

FROM deps AS deps-router
COPY requirements/router.txt requirements/
RUN --mount=type=cache,target=/pip-cache --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    install-deps requirements/router.txt

FROM deps AS deps-worker
COPY requirements/worker.txt requirements/
RUN --mount=type=cache,target=/pip-cache --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    install-deps requirements/worker.txt

FROM deps AS deps-worker-gpu
# onnxruntime-gpu with CUDA 12 and cuDNN 9 from PyPI wheels, instead of onnxruntime: both install the same
# `onnxruntime` module (pyproject.toml, the worker-gpu extra, says which CUDA the bound allows).
COPY requirements/worker-gpu.txt requirements/
RUN --mount=type=cache,target=/pip-cache --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    install-deps requirements/worker-gpu.txt

FROM deps AS deps-registrator
COPY requirements/registrator.txt requirements/
RUN --mount=type=cache,target=/pip-cache --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    install-deps requirements/registrator.txt

FROM deps AS deps-api
COPY requirements/api.txt requirements/
RUN --mount=type=cache,target=/pip-cache --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    install-deps requirements/api.txt

FROM deps AS deps-notifier
COPY requirements/notifier.txt requirements/
RUN --mount=type=cache,target=/pip-cache --mount=type=secret,id=pip_conf --mount=type=secret,id=pip_ca \
    install-deps requirements/notifier.txt

# ---- common runtime --------------------------------------------------------------------------
# No apt packages: the wheels bundle FFmpeg (av), their image libraries (opencv-python-headless)
# and OpenBLAS (numpy); what they link against beyond that (glibc, libstdc++, libgcc_s, zlib) is in
# the slim base.
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    metrics_host=0.0.0.0 \
    metrics_port=9100
RUN groupadd --system --gid 10001 vigil \
 && useradd --system --uid 10001 --gid vigil --home-dir /app --no-create-home --shell /usr/sbin/nologin vigil
# Code and data stay root-owned (the services only read them); nothing below /app is writable.
WORKDIR /app
# Stdlib only, so it works in every target. It asks /healthz on the port held by each setting named in
# VIGIL_HEALTHZ_PORT_SETTINGS (the api adds its own port). A port of 0 switches that endpoint off, and then
# there is nothing to ask: report healthy rather than hold back every service that depends on this one.
# pydantic-settings reads names case-insensitively, so the environment is too.
ENV VIGIL_HEALTHZ_PORT_SETTINGS=metrics_port
# --start-interval would need Engine 25: docker-compose.engine25.yml adds it for those who have one.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; env = {k.lower(): v for k, v in os.environ.items()}; ports = [int(env.get(name) or 0) for name in env.get('vigil_healthz_port_settings', 'metrics_port').split()]; [urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2) for port in ports if port]"]

FROM runtime AS reader
COPY --from=deps-reader /opt/venv /opt/venv
COPY shared ./shared
COPY services ./services
COPY video ./video
RUN python -m compileall -q shared services
USER vigil
CMD ["python", "-m", "services.reader"]

FROM runtime AS router
COPY --from=deps-router /opt/venv /opt/venv
COPY shared ./shared
COPY services ./services
RUN python -m compileall -q shared services
USER vigil
CMD ["python", "-m", "services.router"]

# One image for every model: compose picks the worker's role (services.worker --role ...) with `command:`.
FROM runtime AS worker
COPY --from=deps-worker /opt/venv /opt/venv
COPY shared ./shared
COPY services ./services
COPY models ./models
RUN python -m compileall -q shared services
USER vigil
CMD ["python", "-m", "services.detection"]

FROM runtime AS worker-gpu
# The NVIDIA runtime mounts only what these capabilities name; the driver's libcuda comes from the host.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=deps-worker-gpu /opt/venv /opt/venv
# The CUDA and cuDNN libraries live in the nvidia-* wheels, outside the loader's default path.
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/vigil-nvidia-wheels.conf \
 && ldconfig
COPY shared ./shared
COPY services ./services
COPY models ./models
RUN python -m compileall -q shared services
USER vigil
CMD ["python", "-m", "services.detection"]

FROM runtime AS registrator
COPY --from=deps-registrator /opt/venv /opt/venv
COPY shared ./shared
COPY services ./services
RUN python -m compileall -q shared services
# Created here, owned by the service user, so an empty named volume mounted on it inherits both.
RUN mkdir -p /data/events && chown vigil:vigil /data/events
ENV TMP_PATH=/data/events
USER vigil
CMD ["python", "-m", "services.registrator"]

# Reads events from Redis and their proofs from SeaweedFS: no models, no video, no codecs.
FROM runtime AS api
COPY --from=deps-api /opt/venv /opt/venv
COPY shared ./shared
COPY services ./services
RUN python -m compileall -q shared services
# Listening on every interface of the container; compose decides what the host publishes.
ENV api_host=0.0.0.0 \
    api_port=8080 \
    VIGIL_HEALTHZ_PORT_SETTINGS="metrics_port api_port"
EXPOSE 8080
USER vigil
CMD ["python", "-m", "services.api"]

# Event notices to webhooks and MQTT: the router's packages and aiomqtt; no Redis, no SeaweedFS, no codecs.
FROM runtime AS notifier
COPY --from=deps-notifier /opt/venv /opt/venv
COPY shared ./shared
COPY services ./services
RUN python -m compileall -q shared services
USER vigil
CMD ["python", "-m", "services.notifier"]
