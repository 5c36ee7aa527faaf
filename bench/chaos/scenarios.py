"""The scenarios of the chaos suite, in the order they run, imported only when they run."""

from __future__ import annotations

import importlib

from bench.chaos.outcome import Scenario

# name -> "module:function"; each module owns one kind of fault (see its docstring).
SCENARIOS: dict[str, str] = {
    "crash-update": "bench.chaos.crash_update:run",
    "disk-full": "bench.chaos.disk_full:run",
    "broker-outage": "bench.chaos.broker_outage:run",
    "cp-restart": "bench.chaos.cp_restart:run",
    "overload": "bench.chaos.overload:run",
    "soak": "bench.chaos.soak:run",
    "hostile-clients": "bench.chaos.hostile_clients:run",
    "fuzz": "bench.chaos.fuzz:run",
}


def load(name: str) -> Scenario:
    """The scenario function registered under `name`."""
    module, _, function = SCENARIOS[name].partition(":")
    scenario: Scenario = getattr(importlib.import_module(module), function)
    return scenario
