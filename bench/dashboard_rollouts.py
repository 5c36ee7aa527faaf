"""The dashboard benchmark's rollouts: one completed, one running at its second wave with the
canary's gate results, one rolled back by its error-rate gate; their waves and devices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.dashboard_rows import digest, insert_rows
from control_plane.db.models import AuditEntry, Rollout, RolloutDevice, RolloutWave, utcnow


def _gates(passed: bool, error_rate: float, failure: float) -> dict[str, Any]:
    return {
        "passed": passed,
        "evaluated_at": utcnow().isoformat(),
        "gates": [
            {
                "gate": "failure",
                "value": failure,
                "threshold": 10.0,
                "passed": failure <= 10.0,
                "detail": "activation outcomes",
            },
            {
                "gate": "error_rate",
                "value": error_rate,
                "threshold": 0.05,
                "passed": error_rate <= 0.05,
                "detail": "errors over requests",
            },
            {
                "gate": "p95_ratio",
                "value": 1.04,
                "threshold": 1.5,
                "passed": True,
                "detail": "p95 against the previous version",
            },
        ],
    }


async def seed_rollouts(
    engine: AsyncEngine,
    now: datetime,
    ids: Sequence[str],
    order: Sequence[str],
    running_waves: Sequence[Sequence[str]],
    on_v3: set[str],
    site03: Sequence[str],
) -> dict[str, int]:
    """Rollout 1 (mlp v2, completed), 2 (mlp v3, running) and 3 (cnn v2, rolled back).

    `order` is the running rollout's device order, `running_waves` its waves, `on_v3` the
    devices that already report v3, `site03` the target of the rolled-back one.
    """
    rows: dict[str, int] = {}
    strategy = {
        "kind": "canary",
        "canary": {"percent": 1.0},
        "waves": [{"percent": 10.0}, {"percent": 50.0}, {"percent": 100.0}],
        "rate_per_minute": None,
        "wait_s": 1800.0,
        "activation_timeout_s": 900.0,
    }
    gates = {
        "max_failure_pct": 10.0,
        "max_error_rate": 0.05,
        "max_p95_ratio": 1.5,
        "min_requests": 20,
        "require_traffic": False,
        "baseline_window_s": 3600.0,
        "on_failure": "rollback",
    }
    wave1_started = now - timedelta(minutes=20)
    rollouts = [
        {
            "id": 1,
            "model": "mlp",
            "version": 2,
            "digest": digest("mlp-2"),
            "target": "group:fleet",
            "strategy": {**strategy, "waves": [{"percent": 100.0}]},
            "gates": gates,
            "state": "completed",
            "current_wave": 2,
            "created_at": now - timedelta(days=12),
            "created_by": "alice",
            "updated_at": now - timedelta(days=11),
        },
        {
            "id": 2,
            "model": "mlp",
            "version": 3,
            "digest": digest("mlp-3"),
            "target": "group:fleet",
            "strategy": strategy,
            "gates": gates,
            "state": "running",
            "current_wave": 1,
            "wave_started_at": wave1_started,
            "created_at": now - timedelta(hours=22),
            "created_by": "alice",
            "updated_at": wave1_started,
        },
        {
            "id": 3,
            "model": "cnn",
            "version": 2,
            "digest": digest("cnn-2"),
            "target": "group:site-03",
            "strategy": {**strategy, "waves": [{"percent": 100.0}]},
            "gates": gates,
            "state": "rolled_back",
            "current_wave": 0,
            "reason": "wave 0 failed its gates (error_rate: 31 errors in 400 requests)",
            "created_at": now - timedelta(hours=30),
            "created_by": "bob",
            "updated_at": now - timedelta(hours=29),
        },
    ]
    rows["rollouts"] = await insert_rows(engine, Rollout, rollouts)
    waves = [
        _wave(1, 0, len(ids) // 100, "passed", now - timedelta(days=12), _gates(True, 0.002, 0)),
        _wave(
            1,
            1,
            len(ids) - len(ids) // 100,
            "passed",
            now - timedelta(days=11),
            _gates(True, 0.003, 0.1),
        ),
    ]
    for index, wave_devices in enumerate(running_waves):
        state = "passed" if index == 0 else "running" if index == 1 else "pending"
        started = now - timedelta(hours=21) if index == 0 else wave1_started if index == 1 else None
        results = _gates(True, 0.004, 0.0) if index == 0 else None
        waves.append(_wave(2, index, len(wave_devices), state, started, results))
    waves.append(_wave(3, 0, 4, "failed", now - timedelta(hours=30), _gates(False, 0.0775, 0.0)))
    waves.append(_wave(3, 1, len(site03) - 4, "pending", None, None))
    rows["rollout_waves"] = await insert_rows(engine, RolloutWave, waves)
    members: list[dict[str, Any]] = []
    canary = set(order[: len(ids) // 100])
    for ident in ids:
        members.append(_member(1, ident, 0 if ident in canary else 1, "active", digest("mlp-1")))
    for index, wave in enumerate(running_waves):
        for ident in wave:
            state = "active" if ident in on_v3 else "assigned" if index == 1 else "pending"
            members.append(_member(2, ident, index, state, digest("mlp-2")))
    for position, ident in enumerate(site03):
        members.append(
            _member(
                3,
                ident,
                0 if position < 4 else 1,
                "rolled_back" if position < 4 else "pending",
                digest("cnn-1"),
            )
        )
    rows["rollout_devices"] = await insert_rows(engine, RolloutDevice, members)
    audit = [
        {
            "time": now - timedelta(days=12),
            "actor": "alice",
            "action": "rollout.create",
            "target": "rollout:1",
            "before": None,
            "after": {"model": "mlp", "version": 2},
        },
        {
            "time": now - timedelta(hours=22),
            "actor": "alice",
            "action": "rollout.create",
            "target": "rollout:2",
            "before": None,
            "after": {"model": "mlp", "version": 3},
        },
        {
            "time": now - timedelta(hours=30),
            "actor": "bob",
            "action": "rollout.create",
            "target": "rollout:3",
            "before": None,
            "after": {"model": "cnn", "version": 2},
        },
    ]
    rows["audit_log"] = await insert_rows(engine, AuditEntry, audit)
    return rows


def _wave(
    rollout: int, index: int, size: int, state: str, started: datetime | None, results: Any
) -> dict[str, Any]:
    finished = (
        started + timedelta(minutes=40) if started and state in ("passed", "failed") else None
    )
    return {
        "rollout_id": rollout,
        "index": index,
        "size": size,
        "state": state,
        "started_at": started,
        "finished_at": finished,
        "gate_results": results,
    }


def _member(rollout: int, ident: str, wave: int, state: str, previous: str) -> dict[str, Any]:
    assigned = None if state == "pending" else utcnow() - timedelta(minutes=19)
    return {
        "rollout_id": rollout,
        "device_id": ident,
        "wave": wave,
        "previous_digest": previous,
        "state": state,
        "assigned_at": assigned,
        "updated_at": utcnow(),
    }
