# syntax=docker/dockerfile:1
# The hub image for deploy/kubernetes/values.yaml: the z2jh chart's own hub
# image (JupyterHub, KubeSpawner, the chart's jupyterhub_config.py) plus this
# package with its [kubernetes] extra. Build from the repository root:
#
#   docker build -f deploy/kubernetes/hub.Dockerfile \
#     -t registry.example.org/hardened-spawner-hub:0.1.0 .
#
# Keep Z2JH_VERSION the chart version you install (helm --version).
ARG Z2JH_VERSION=4.4.0

# A wheel of this repository (pure Python: any Python builds it), without tests.
FROM python:3.12-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hardened_spawner ./hardened_spawner
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM quay.io/jupyterhub/k8s-hub:${Z2JH_VERSION}
USER root
# The constraints keep every package the chart's image pins (JupyterHub,
# KubeSpawner, ...) at its version; only what is missing is added.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip freeze > /tmp/chart-pins.txt \
 && pip install --no-cache-dir --constraint /tmp/chart-pins.txt \
        "$(ls /wheels/*.whl)[kubernetes]" \
 && rm /tmp/chart-pins.txt
# The chart's image runs the hub as jovyan (UID 1000).
USER jovyan
