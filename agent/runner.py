"""`edgefleet agent run`: serve only verified bundles, following the signed assignment.

Wires the bundle path onto the serving agent: the trust store (pinned root key and signed key
list), the durable state, the content-addressed store, the downloader, the activator and the
assignment sync. The HTTP server is live at once; recovery (serving the last committed versions)
and the sync loop run in the background, and readiness waits for the assigned models. An
enrolled device (`agent.identity`) signs every request it makes to the control plane.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from agent.bundles.activation import ActivationSettings, BundleActivator, StateKeeper
from agent.bundles.control import BundleModelControl
from agent.bundles.download import BundleDownloader
from agent.bundles.lifecycle import EventLog
from agent.bundles.pause import PausePoints
from agent.bundles.probation import ProbationPolicy
from agent.bundles.recovery import recover
from agent.bundles.state import StateFile
from agent.bundles.store import BundleStore
from agent.bundles.sync import AssignmentSource, AssignmentSync
from agent.config import AgentSettings, SettingsError
from agent.identity import TRUSTED_KEYLIST as TRUSTED_KEYLIST  # the kept key list's name
from agent.identity import control_plane_session, control_plane_tls, request_signer
from agent.model import ModelState
from agent.runtimes.registry import RuntimeRegistry
from agent.server.app import Agent, build_agent
from shared.atomic import PRIVATE, write_atomic
from shared.keylist import SignedKeyList, TrustStore
from shared.keys import load_public
from shared.mqtt.commands import Command, CommandVerifier

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"


@dataclass
class BundleServices:
    """The running bundle path, for tests and for the MQTT reporter to come."""

    activator: BundleActivator
    sync: AssignmentSync
    keeper: StateKeeper
    recovered: asyncio.Event


def load_trust(settings: AgentSettings) -> TrustStore:
    """The key list to trust: the newest one seen, never an older one (blocking).

    The first start trusts `bundles.keylist` because the pinned root (`bundles.root_key`) signed
    it, and keeps a copy in the state directory. Later starts trust that copy (it was verified
    when it was accepted, and it names the current root, so a root rotation does not need a new
    pinned key), and accept `bundles.keylist` only if it is a newer version signed by the
    current root: an older list, even one the pinned root signed, is a rollback and is ignored.
    """
    bundles = settings.bundles
    if not bundles.root_key or not bundles.keylist:
        raise SettingsError(
            "agent run needs bundles.root_key (root.pub) and bundles.keylist (keylist.json) "
            "from `edgefleet keys init`"
        )
    configured = Path(bundles.keylist).expanduser().read_bytes()
    kept = settings.state_dir / TRUSTED_KEYLIST
    if kept.is_file():
        stored = SignedKeyList.parse(kept.read_bytes())
        trust = TrustStore.bootstrap(stored.key_list.root, kept.read_bytes())
        offered = SignedKeyList.parse(configured).key_list.version
        if offered > trust.key_list.version:
            trust = trust.update(configured)
        elif offered < trust.key_list.version:
            log.warning(
                "ignoring %s: key list version %d is older than the trusted version %d",
                bundles.keylist,
                offered,
                trust.key_list.version,
            )
    else:
        root = load_public(Path(bundles.root_key).expanduser())
        trust = TrustStore.bootstrap(root, configured)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    document = trust.to_document()
    # Written only when it changed: a restart must not need free space (a full disk).
    if not kept.is_file() or kept.read_bytes() != document:
        write_atomic(kept, document, PRIVATE)  # as `agent enroll` writes it
    return trust


def build_production_agent(
    settings: AgentSettings,
    registry: RuntimeRegistry | None = None,
    on_services: Callable[[BundleServices], None] | None = None,
) -> Agent:
    """An agent that serves what its signed assignment names, and nothing else."""
    if not settings.bundles.assignment:
        raise SettingsError("agent run needs bundles.assignment (a URL or a file path)")
    if settings.models:
        raise SettingsError(
            "agent run serves signed bundles only; local [models] are for `agent serve`"
        )
    trust = load_trust(settings)
    tls = control_plane_tls(settings)  # before serving: a bad CA file stops the start
    agent = build_agent(settings, registry)
    agent.app.cleanup_ctx.append(_bundle_path(agent, trust, tls, on_services))
    return agent


def _bundle_path(
    agent: Agent,
    trust: TrustStore,
    tls: ssl.SSLContext | None,
    on_services: Callable[[BundleServices], None] | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    settings = agent.settings
    bundles = settings.bundles

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        state_dir = settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        state_file = StateFile(state_dir)
        await loop.run_in_executor(None, state_file.discard_interrupted_writes)  # none under way
        keeper = StateKeeper(
            state_file, await loop.run_in_executor(None, state_file.load), agent.executor
        )
        # Enrolled devices sign every request to the control plane (assignments, bundles),
        # and check its HTTPS certificate against bundles.ca_file when one is set.
        signer = await loop.run_in_executor(None, request_signer, settings)
        async with control_plane_session(signer, tls) as session:
            downloader = BundleDownloader(
                BundleStore(state_dir / "bundles"), session, agent.executor
            )
            activator = BundleActivator(
                repository=agent.repository,
                downloader=downloader,
                trust=lambda: trust,
                keeper=keeper,
                events=EventLog(state_dir / EVENTS_FILE),
                executor=agent.executor,
                settings=_activation_settings(settings),
                pauses=PausePoints(state_dir, bundles.test_pause_at),
            )
            sync = AssignmentSync(
                source=AssignmentSource.for_location(bundles.assignment, session, agent.executor),
                activator=activator,
                keeper=keeper,
                trust=lambda: trust,
                device_id=settings.device_id,
                interval_s=bundles.poll_interval_s,
            )
            services = BundleServices(activator, sync, keeper, asyncio.Event())
            _connect_reporter(agent, services, trust)
            agent.dataplane.readiness = lambda: _ready(agent, services)
            agent.dataplane.control = BundleModelControl(activator)
            if on_services is not None:
                on_services(services)
            task = loop.create_task(_run(services), name="edgefleet-bundles")
            yield
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return lifecycle


def _connect_reporter(agent: Agent, services: BundleServices, trust: TrustStore) -> None:
    """Publish lifecycle events and obey signed `sync` and `rollback` commands over MQTT."""
    reporter = agent.reporter
    if reporter is None:
        return
    reporter.verifier = CommandVerifier(
        lambda: trust, agent.settings.device_id, reporter.settings.groups
    )
    services.activator.listeners.append(
        lambda event: reporter.event({"kind": "lifecycle", **event.as_json()})
    )

    async def sync(command: Command) -> str:
        services.sync.trigger()
        return "assignment sync started"

    async def rollback(command: Command) -> str:
        wanted = command.args.get("model")
        names = [wanted] if isinstance(wanted, str) else sorted(services.keeper.state.models)
        return "; ".join([await services.activator.rollback(name) for name in names])

    reporter.handlers.update({"sync": sync, "rollback": rollback})


async def _run(services: BundleServices) -> None:
    await recover(services.activator)
    await services.sync.load_accepted()
    services.recovered.set()
    await services.sync.run()


def _ready(agent: Agent, services: BundleServices) -> bool:
    """Ready once recovered and every assigned model has a version serving."""
    assignment = services.sync.assignment
    if not services.recovered.is_set() or assignment is None:
        return False
    for model in assignment.models:
        versions = agent.repository.versions_or_none(model.name)
        if not any(v.state is ModelState.READY for v in versions):
            return False
    return True


def _activation_settings(settings: AgentSettings) -> ActivationSettings:
    bundles = settings.bundles
    return ActivationSettings(
        keep_versions=bundles.keep_versions,
        max_attempts=bundles.max_attempts,
        probation=ProbationPolicy(
            duration_s=bundles.probation_duration_s,
            requests=bundles.probation_requests,
            max_error_rate=bundles.probation_max_error_rate,
            max_latency_ratio=bundles.probation_max_latency_ratio,
            min_requests=bundles.probation_min_requests,
        ),
        batching=settings.batching,
        selection_budget_s=settings.selection.budget_s,
    )
