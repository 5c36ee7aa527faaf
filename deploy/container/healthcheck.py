"""Container health check: exit 0 when this container's HTTP endpoint answers 2xx, else 1.

Slim images have no curl, but they have Python. The port comes from the environment variable
the service itself reads, so the check follows a changed port:

    healthcheck.py --port-env EDGEFLEET_AGENT_SERVER_PORT --port 8000 /v2/health/live

So does TLS: with `--tls-env EDGEFLEET_CP_TLS_CERT_FILE`, when that variable names the served
certificate, the check asks over HTTPS and trusts exactly that certificate chain. The name in
the certificate is not compared: the check asks 127.0.0.1, which the certificate rarely names.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    """Probe `http://127.0.0.1:PORT/PATH` once; 0 if healthy, 1 if not (Docker's meaning)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the endpoint, e.g. /v2/health/live")
    parser.add_argument("--port", type=int, default=8000, help="port if the variable is unset")
    parser.add_argument("--port-env", default="", help="the variable holding the service's port")
    parser.add_argument(
        "--tls-env", default="", help="the variable naming the served certificate, if any"
    )
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    port = os.environ.get(args.port_env, "") if args.port_env else ""
    certificate = os.environ.get(args.tls_env, "") if args.tls_env else ""
    scheme = "https" if certificate else "http"
    url = f"{scheme}://127.0.0.1:{port or args.port}{args.path}"
    try:
        context = _own_certificate(certificate) if certificate else None
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as response:
            status = int(response.status)
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
    except (OSError, ValueError) as error:  # refused, timed out, a malformed port, bad TLS
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if not 200 <= status < 300:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def _own_certificate(path: str) -> ssl.SSLContext:
    """Trust the chain in `path` (the one the service serves; a leaf may be the anchor)."""
    context = ssl.create_default_context(cafile=path)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


if __name__ == "__main__":
    sys.exit(main())
