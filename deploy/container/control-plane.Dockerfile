# syntax=docker/dockerfile:1
# The EdgeFleet control plane: REST API, enrollment CA, MQTT ingest and rollouts.
#
#   docker build -f deploy/container/control-plane.Dockerfile -t edgefleet-control-plane .
#   docker run edgefleet-control-plane cp migrate --data /var/lib/edgefleet-cp   (once per release)
#   docker run -p 8080:8080 -v edgefleet-cp:/var/lib/edgefleet-cp -v ./keys:/etc/edgefleet/keys:ro \
#       -v ./tls:/etc/edgefleet/tls:ro -e EDGEFLEET_CP_TLS_CERT_FILE=/etc/edgefleet/tls/cp.crt \
#       -e EDGEFLEET_CP_TLS_KEY_FILE=/etc/edgefleet/tls/cp.key \
#       -e EDGEFLEET_CP_DATABASE_URL=postgresql://... edgefleet-control-plane
#
# Settings are EDGEFLEET_CP_* variables (docs/operations.md); the image sets where data and
# keys live and that the API listens on every interface of the container. That is not loopback,
# so the control plane needs TLS: its own certificate (EDGEFLEET_CP_TLS_CERT_FILE and _KEY_FILE,
# as above), or EDGEFLEET_CP_BEHIND_TLS_PROXY=true behind an Ingress or load balancer that
# terminates TLS. Without either it refuses to start, and says so.

# --- 1. Build the wheel ------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY control_plane ./control_plane
COPY shared ./shared
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- 2. The runtime image ---------------------------------------------------------------------
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="edgefleet-control-plane" \
      org.opencontainers.image.description="EdgeFleet control plane" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/edgefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEFLEET_CP_DATA_DIR=/var/lib/edgefleet-cp \
    EDGEFLEET_CP_KEYS_DIR=/etc/edgefleet/keys \
    EDGEFLEET_CP_HOST=0.0.0.0 \
    EDGEFLEET_CP_PORT=8080

RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid edgefleet --home-dir /var/lib/edgefleet-cp \
        --no-create-home --shell /usr/sbin/nologin edgefleet \
    && install -d -o edgefleet -g edgefleet -m 0700 /var/lib/edgefleet-cp

RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python -m venv /opt/edgefleet \
    && /opt/edgefleet/bin/pip install --no-cache-dir \
        "$(find /wheels -name 'edgefleet-*.whl')[control-plane]"

COPY --chmod=0755 deploy/container/healthcheck.py /usr/local/bin/edgefleet-healthcheck

USER 10001:10001
WORKDIR /var/lib/edgefleet-cp
# The database (SQLite, when no PostgreSQL URL is given), bundle blobs and the device CA.
VOLUME ["/var/lib/edgefleet-cp"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/edgefleet/bin/python", "/usr/local/bin/edgefleet-healthcheck", \
         "--port-env", "EDGEFLEET_CP_PORT", "--tls-env", "EDGEFLEET_CP_TLS_CERT_FILE", \
         "--port", "8080", "/api/v1/health"]

ENTRYPOINT ["edgefleet"]
CMD ["cp", "serve"]
