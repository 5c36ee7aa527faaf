"""What a selection decided and measured, and where decisions are kept between restarts.

`SelectionReport` is what logs, `/v2/models/{m}/config`, `agent probe --model` and the MQTT
selection events show; `SelectionCache` keeps reports in one JSON file under the state directory,
keyed by `AcceleratorSelector.cache_key`, so a restart loads the chosen backend without measuring.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.atomic import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one candidate did during selection."""

    candidate: str
    runtime: str
    device: str
    file: str
    precision: str
    ok: bool
    error: str | None = None
    load_ms: float | None = None
    latency_ms_p50: float | None = None  # batch 1
    latency_ms_p95: float | None = None  # batch 1
    throughput_rows_s: float | None = None  # at the largest batch
    max_batch: int = 1
    runs: int = 0


@dataclass(frozen=True, slots=True)
class SelectionReport:
    """The outcome of a selection: the chosen candidate, the ranking and the figures."""

    model: str
    policy: str
    chosen: str
    ranking: tuple[str, ...]  # candidate keys, best first, failed ones excluded
    measurements: tuple[Measurement, ...]
    source: str  # "measured" | "cache" | "pinned"
    cache_key: str
    decided_at: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready data."""
        data = asdict(self)
        data["ranking"] = list(self.ranking)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SelectionReport:
        """Rebuild a report stored by `as_json`."""
        measurements = tuple(Measurement(**m) for m in data["measurements"])
        return cls(
            model=data["model"],
            policy=data["policy"],
            chosen=data["chosen"],
            ranking=tuple(data["ranking"]),
            measurements=measurements,
            source=data["source"],
            cache_key=data["cache_key"],
            decided_at=data["decided_at"],
        )


class SelectionCache:
    """Selection reports persisted as one JSON file, written atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def get(self, key: str) -> SelectionReport | None:
        """Return the cached report for `key`, or None."""
        entry = self._read().get(key)
        if entry is None:
            return None
        try:
            return SelectionReport.from_json(entry)
        except (KeyError, TypeError):
            log.warning("ignoring a malformed selection cache entry %s", key[:12])
            return None

    def put(self, report: SelectionReport) -> None:
        """Store a report under its cache key."""
        entries = self._read()
        entries[report.cache_key] = report.as_json()
        self._write(entries)

    def discard(self, key: str) -> None:
        """Forget the report for `key` (its choice no longer loads)."""
        entries = self._read()
        if entries.pop(key, None) is not None:
            self._write(entries)

    def _write(self, entries: dict[str, Any]) -> None:
        """Replace the file atomically, so a crash leaves the old or the new cache, never half."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(entries, indent=1).encode())

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable selection cache %s: %s", self.path, error)
            return {}
        return data if isinstance(data, dict) else {}
