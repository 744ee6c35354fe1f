# syntax=docker/dockerfile:1
# The kubetune operator: kopf + the kubernetes client + prometheus-client on slim Python. No torch.
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/kubetune/kubetune-operator:0.1.0 .
# Every Python package comes from requirements/constraints.txt (the same pins the tests run with).

ARG PYTHON_VERSION=3.11.14
ARG DEBIAN_VERSION=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_VERSION} AS build
ARG PIP_VERSION=25.3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kubetune && /opt/kubetune/bin/pip install "pip==${PIP_VERSION}"
WORKDIR /src
# setuptools builds the wheel from every mapped package folder (pyproject.toml's package-dir), so all of them come in.
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY kubetune kubetune
COPY operator operator
COPY jobs jobs
COPY tools/llama tools/llama
COPY datasets_new datasets_new
COPY templates templates
# PIP_CONSTRAINT (not -c) so that the isolated build environment's setuptools is pinned too.
RUN PIP_CONSTRAINT=/src/requirements/constraints.txt /opt/kubetune/bin/pip install ".[operator]" \
 && /opt/kubetune/bin/pip check

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_VERSION}
ARG KUBETUNE_VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="kopf operator that drives FineTuneRuns through their stage Jobs" \
      org.opencontainers.image.version="${KUBETUNE_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 65532 kubetune \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kubetune
COPY --from=build /opt/kubetune /opt/kubetune
# The pod's root filesystem is read-only: no bytecode writes, HOME on the /tmp emptyDir.
ENV PATH=/opt/kubetune/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
# 8080: kopf's /healthz (KUBETUNE_HEALTH_PORT); 9090: Prometheus metrics (KUBETUNE_METRICS_PORT).
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "kubetune.operator"]
