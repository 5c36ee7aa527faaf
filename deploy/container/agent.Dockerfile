# syntax=docker/dockerfile:1
# The EdgeFleet agent, CPU build: ONNX Runtime, OpenVINO and LiteRT on Debian slim.
#
#   docker build -f deploy/container/agent.Dockerfile -t edgefleet-agent .   (repository root)
#   docker run -v edgefleet-agent:/var/lib/edgefleet -p 8000:8000 \
#       -e EDGEFLEET_ENROLL_URL=https://cp.example.com -e EDGEFLEET_ENROLL_TOKEN=efe_... \
#       --entrypoint edgefleet-agent-start edgefleet-agent
#
# `edgefleet-agent-start` enrolls on the first start and then runs `edgefleet agent run`; the
# plain entrypoint is `edgefleet` (e.g. `docker run edgefleet-agent agent probe`).

# --- 1. Build the wheel (pure Python; its dependencies are installed in stage 2) -------------
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY control_plane ./control_plane
COPY shared ./shared
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- 2. The runtime image: a virtual environment, no compiler, no pip cache -----------------
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="edgefleet-agent" \
      org.opencontainers.image.description="EdgeFleet edge inference agent (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_AGENT_STATE_DIR=/var/lib/edgefleet \
    EDGEFLEET_AGENT_SERVER_HOST=0.0.0.0 \
    EDGEFLEET_AGENT_SERVER_PORT=8000

# A fixed UID/GID (10001), so that volumes, Kubernetes' runAsUser and host directories agree.
RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid edgefleet --home-dir /var/lib/edgefleet \
        --no-create-home --shell /usr/sbin/nologin edgefleet \
    && install -d -o edgefleet -g edgefleet -m 0700 /var/lib/edgefleet

# The wheel is bind-mounted from stage 1, so it never lands in a layer.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install --no-cache-dir \
        "$(find /wheels -name 'edgefleet-*.whl')[openvino,tflite]"

COPY --chmod=0755 deploy/container/agent-start.sh /usr/local/bin/edgefleet-agent-start
COPY --chmod=0755 deploy/container/healthcheck.py /usr/local/bin/edgefleet-healthcheck

USER 10001:10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8000

# Liveness only: readiness (/v2/health/ready) waits for every assigned model, and a container
# marked unhealthy while a large bundle downloads would be restarted for nothing.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/edgefleet/bin/python", "/usr/local/bin/edgefleet-healthcheck", \
         "--port-env", "EDGEFLEET_AGENT_SERVER_PORT", "--port", "8000", "/v2/health/live"]

ENTRYPOINT ["edgefleet"]
CMD ["agent", "run"]
