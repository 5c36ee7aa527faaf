"""Where the demo keeps its files and where its services listen, decided once from the flags.

DIR/keys  models/  mlp-1.bundle  cp/  agent/  logs/  admin-token  infer-request.json
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from control_plane.db.engine import default_database_url
from shared.mqtt.broker import LOOPBACK

ANY_ADDRESS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo keeps its files, where its services listen, and which broker it uses."""

    directory: Path
    host: str = "127.0.0.1"
    cp_port: int = 8080
    agent_port: int = 8000
    mqtt_port: int = 1883
    mosquitto: str | None = None  # the Mosquitto program; None: the embedded broker
    python: str = sys.executable

    @property
    def address(self) -> str:
        """Where clients connect: the host, or loopback when the services bind every address."""
        return LOOPBACK if self.host in ANY_ADDRESS else self.host

    @property
    def cp_url(self) -> str:
        """The control plane's base URL (also what devices are told)."""
        return f"http://{self.address}:{self.cp_port}"

    @property
    def agent_address(self) -> str:
        """The agent as tritonclient wants it: host:port."""
        return f"{self.address}:{self.agent_port}"

    @property
    def mqtt_url(self) -> str:
        """The broker, which listens on loopback only."""
        return f"mqtt://{LOOPBACK}:{self.mqtt_port}"

    @property
    def database_url(self) -> str:
        """SQLite in the control plane's data dir."""
        return default_database_url(self.cp_data)

    @property
    def cp_data(self) -> Path:
        """The control plane's data dir."""
        return self.directory / "cp"

    @property
    def agent_state(self) -> Path:
        """The agent's state dir."""
        return self.directory / "agent"

    @property
    def logs(self) -> Path:
        """One log file per process."""
        return self.directory / "logs"

    @property
    def token_file(self) -> Path:
        """The admin token's secret (0600), reused by the next run."""
        return self.directory / "admin-token"

    @property
    def request_file(self) -> Path:
        """A KServe v2 JSON request with the sample input, for the curl example."""
        return self.directory / "infer-request.json"
