"""Container health check: exit 0 when this container's HTTP endpoint answers 2xx, else 1.

Slim images have no curl, but they have Python. The port comes from the environment variable
the service itself reads, so the check follows a changed port:

    healthcheck.py --port-env EDGEFLEET_AGENT_SERVER_PORT --port 8000 /v2/health/live
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    """Probe `http://127.0.0.1:PORT/PATH` once; 0 if healthy, 1 if not (Docker's meaning)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the endpoint, e.g. /v2/health/live")
    parser.add_argument("--port", type=int, default=8000, help="port if the variable is unset")
    parser.add_argument("--port-env", default="", help="the variable holding the service's port")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    port = os.environ.get(args.port_env, "") if args.port_env else ""
    url = f"http://127.0.0.1:{port or args.port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
    except (OSError, ValueError) as error:  # refused, timed out, a malformed port
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if not 200 <= status < 300:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
