# syntax=docker/dockerfile:1
# The EdgeFleet agent, NVIDIA GPU build: ONNX Runtime with the CUDA (and TensorRT, when its
# libraries are present) execution providers, NVML for GPU telemetry.
#
#   docker build -f deploy/container/agent-gpu.Dockerfile -t edgefleet-agent-gpu .   (root)
#   docker run --gpus all -v edgefleet-agent:/var/lib/edgefleet -p 8000:8000 \
#       --entrypoint edgefleet-agent-start ... edgefleet-agent-gpu
#
# The host needs the NVIDIA driver and the NVIDIA Container Toolkit; the CUDA 12 and cuDNN 9
# user-space libraries onnxruntime-gpu loads come with the base image.

# --- 1. Build the wheel ------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY control_plane ./control_plane
COPY shared ./shared
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- 2. The runtime image on NVIDIA's CUDA runtime (Ubuntu 24.04: Python 3.12) ----------------
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="edgefleet-agent-gpu" \
      org.opencontainers.image.description="EdgeFleet edge inference agent (NVIDIA GPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_AGENT_STATE_DIR=/var/lib/edgefleet \
    EDGEFLEET_AGENT_SERVER_HOST=0.0.0.0 \
    EDGEFLEET_AGENT_SERVER_PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Ubuntu's Python, unpinned on purpose: the security updates of the base's release are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# A fixed UID/GID (10001), as in the CPU image.
RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid edgefleet --home-dir /var/lib/edgefleet \
        --no-create-home --shell /usr/sbin/nologin edgefleet \
    && install -d -o edgefleet -g edgefleet -m 0700 /var/lib/edgefleet

# `edgefleet[gpu]` brings onnxruntime-gpu beside the CPU onnxruntime of the core dependencies.
# Both install the same `onnxruntime` package directory, so whichever is written last wins:
# remove the CPU one, then lay the GPU one down again, at the version pip chose.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install --no-cache-dir \
        "$(find /wheels -name 'edgefleet-*.whl')[gpu]" \
    && ort="$(/opt/edgefleet/bin/pip show onnxruntime-gpu | sed -n 's/^Version: //p')" \
    && /opt/edgefleet/bin/pip uninstall -y onnxruntime \
    && /opt/edgefleet/bin/pip install --no-cache-dir --no-deps --force-reinstall \
        "onnxruntime-gpu==${ort}"

COPY --chmod=0755 deploy/container/agent-start.sh /usr/local/bin/edgefleet-agent-start
COPY --chmod=0755 deploy/container/healthcheck.py /usr/local/bin/edgefleet-healthcheck

USER 10001:10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/edgefleet/bin/python", "/usr/local/bin/edgefleet-healthcheck", \
         "--port-env", "EDGEFLEET_AGENT_SERVER_PORT", "--port", "8000", "/v2/health/live"]

ENTRYPOINT ["edgefleet"]
CMD ["agent", "run"]
