"""The control plane's settings: built once per process from flags and `EDGEFLEET_CP_*`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from control_plane.db.engine import default_database_url
from control_plane.errors import ControlPlaneError

ENV_PREFIX = "EDGEFLEET_CP_"
DATA_DIR_ENV = ENV_PREFIX + "DATA_DIR"
DATABASE_URL_ENV = ENV_PREFIX + "DATABASE_URL"
HOST_ENV = ENV_PREFIX + "HOST"
PORT_ENV = ENV_PREFIX + "PORT"
KEYS_DIR_ENV = ENV_PREFIX + "KEYS_DIR"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class InvalidSettings(ControlPlaneError):
    """A flag or environment variable has an unusable value; permanent until it is fixed."""


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Where the control plane keeps its data and where its API listens."""

    data_dir: Path
    database_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # Only `root.pub` and `keylist.json` are read from it; never a private key.
    keys_dir: Path | None = None

    @classmethod
    def build(
        cls,
        env: Mapping[str, str],
        data_dir: Path | None = None,
        database_url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        keys_dir: Path | None = None,
    ) -> ControlPlaneSettings:
        """Flags win over the environment, which wins over the defaults."""
        data = data_dir or (Path(env[DATA_DIR_ENV]) if env.get(DATA_DIR_ENV) else None)
        if data is None:
            raise InvalidSettings(f"no data directory: pass --data or set {DATA_DIR_ENV}")
        url = database_url or env.get(DATABASE_URL_ENV) or default_database_url(data)
        return cls(
            data_dir=data,
            database_url=url,
            host=host or env.get(HOST_ENV) or DEFAULT_HOST,
            port=port if port is not None else _port(env.get(PORT_ENV)),
            keys_dir=keys_dir or (Path(env[KEYS_DIR_ENV]) if env.get(KEYS_DIR_ENV) else None),
        )


def _port(raw: str | None) -> int:
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        raise InvalidSettings(f"{PORT_ENV}={raw!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise InvalidSettings(f"{PORT_ENV}={port} is outside 0-65535")
    return port
