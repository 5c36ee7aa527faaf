"""A stand-in `edgefleet` command that install-agent.sh tests install instead of the real one.

It is packed into a wheel (see test_install_agent.py), so the script's venv and pip steps run
for real, offline and in seconds. It knows one command, `agent enroll`: it records how it was
called (arguments and whether the token came through the environment) and writes an
identity.json, as the real enrollment does last.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CALLS_FILE = "enroll-calls.jsonl"


def main() -> int:
    """`edgefleet agent enroll --cp URL --state DIR [...]`, faked."""
    args = sys.argv[1:]
    if args[:2] != ["agent", "enroll"]:
        print(f"fake edgefleet: unsupported command {args}", file=sys.stderr)
        return 2
    options = dict(zip(args[2::2], args[3::2], strict=False))
    state = Path(options["--state"])
    call = {"argv": args, "token": os.environ.get("EDGEFLEET_ENROLL_TOKEN", "")}
    with (state / CALLS_FILE).open("a") as calls:
        calls.write(json.dumps(call) + "\n")
    identity = {"device_id": options.get("--device-id", "fake-host"), "cp": options["--cp"]}
    (state / "identity.json").write_text(json.dumps(identity))
    print(f"enrolled as {identity['device_id']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
