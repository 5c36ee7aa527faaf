"""Wires MQTT reporting into a running agent when `[mqtt] url` is set.

The reporter starts with the HTTP server and stops after it (saying "offline" on the way out).
In every mode it publishes presence, telemetry, selection decisions, and answers the `report`
and `bench` commands; production mode (`agent.runner`) adds lifecycle events and the `sync` and
`rollback` commands, and the command verifier (commands need the key list's assignment keys,
so a development agent without one ignores every command).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.hardware import CPUINFO, HardwareInfo, probe_hardware
from agent.model import ModelState, ServedModel
from agent.server.app import Agent
from agent.telemetry.outbox import Outbox
from agent.telemetry.reporter import ReporterSettings, TelemetryReporter, groups_of, offline_status
from shared.mqtt.client import MqttClient, MqttSettings, Will
from shared.mqtt.commands import Command
from shared.mqtt.topics import device_topic

OUTBOX_FILE = "outbox.sqlite3"


def attach_telemetry(agent: Agent) -> None:
    """Report over MQTT for the life of the agent's HTTP server, if a broker is configured."""
    if agent.settings.mqtt.url:
        agent.app.cleanup_ctx.append(_telemetry(agent))


def mqtt_settings(agent: Agent) -> MqttSettings:
    """The client settings from the agent's `[mqtt]` section (checked when built)."""
    mqtt = agent.settings.mqtt

    def path(value: str) -> Path | None:
        return Path(value).expanduser() if value else None

    return MqttSettings(
        url=mqtt.url,
        client_id=f"edgefleet-agent-{agent.settings.device_id}",
        username=mqtt.username or None,
        password=mqtt.password or None,
        ca_file=path(mqtt.ca_file),
        cert_file=path(mqtt.cert_file),
        key_file=path(mqtt.key_file),
        keepalive_s=mqtt.keepalive_s,
        protocol=mqtt.protocol,
    )


def selection_event(model: ServedModel) -> dict[str, Any]:
    """The event that says which backend a model version runs on, and why."""
    report = model.report
    return {
        "kind": "selection",
        "model": model.name,
        "version": model.version,
        "backend": model.stats.backend,
        "selection": None if report is None else report.as_json(),
    }


def _telemetry(agent: Agent) -> Callable[[web.Application], AsyncIterator[None]]:
    settings = agent.settings

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        device = settings.device_id
        client = MqttClient(
            mqtt_settings(agent), Will(device_topic(device, "status"), offline_status(device))
        )
        outbox = await loop.run_in_executor(
            agent.executor,
            lambda: Outbox(
                settings.state_dir / OUTBOX_FILE,
                settings.mqtt.outbox_max_messages,
                int(settings.mqtt.outbox_max_mb * 2**20),
            ),
        )
        registry = agent.repository.selector.registry
        hardware: HardwareInfo = await loop.run_in_executor(
            agent.executor, probe_hardware, registry, CPUINFO, False
        )
        reporter = TelemetryReporter(
            settings=ReporterSettings(
                device, groups_of(settings.mqtt.groups), settings.mqtt.telemetry_interval_s
            ),
            client=client,
            outbox=outbox,
            repository=agent.repository,
            hardware=lambda: hardware,
            state_dir=settings.state_dir,
            executor=agent.executor,
        )
        reporter.handlers["report"] = lambda command: _report(reporter)
        reporter.handlers["bench"] = lambda command: _bench(agent, command)
        agent.reporter = reporter

        def model_ready(model: ServedModel) -> None:
            reporter.event(selection_event(model))
            reporter.refresh_status()

        agent.repository.on_model_ready.append(model_ready)
        # Loading started before this context (a fast load or a cached selection can finish
        # while the reporter was being built): report those models too. Hook and scan run
        # without an await between them, so every model is reported exactly once.
        for model in agent.repository.all():
            if model.state is ModelState.READY:
                model_ready(model)
        await reporter.start()
        yield
        await reporter.stop()

    return lifecycle


async def _report(reporter: TelemetryReporter) -> str:
    await reporter.report_status()
    return "status queued"


async def _bench(agent: Agent, command: Command) -> str:
    """Measure the backends of one model (args.model) or of all of them again."""
    wanted = command.args.get("model")
    names = [wanted] if isinstance(wanted, str) else agent.repository.names()
    selector = agent.repository.selector
    for name in names:
        for model in agent.repository.versions(name):
            selector.cache.discard(selector.cache_key(model.selection_request()))
        await agent.dataplane.control.load(name)
    chosen = [
        f"{m.name} v{m.version}: {m.stats.backend}"
        for m in agent.repository.all()
        if m.name in names
    ]
    return "measured again: " + ", ".join(chosen)
