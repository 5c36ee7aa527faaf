"""A fleet simulator: many lightweight agents against a real control plane and broker.

Each simulated device enrolls like a real agent (a one-time token, a device key, a CSR), keeps a
signed long poll open on its assignment (requests signed with its key), verifies every new
assignment against the key list it got at enrollment, and reports the way an agent does:
retained presence, lifecycle events for each activation, and telemetry with the agents'
latency histogram. No model is loaded: what happens to each version is scripted
(`VersionBehaviour`): a share of devices whose activation fails, an error rate, a latency.

Devices share a few MQTT connections (about 500 devices each) instead of one per device, so
10,000 of them fit in one process; the broker must therefore let the simulator publish under
every device's topic (the test and demo brokers do; a production ACL would not). Enrolled
identities are kept in `--state DIR`, so a second run reuses them instead of enrolling anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import resource
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.client import ApiCallFailed, ControlPlaneClient
from control_plane.sim_reports import (
    BACKEND_HARDWARE,
    VersionBehaviour,
    lifecycle_event,
    status_report,
    telemetry_report,
)
from shared.assignment import Assignment, verify_assignment
from shared.atomic import write_atomic
from shared.device_auth import sign_request
from shared.device_key import DeviceKey
from shared.errors import EdgeFleetError
from shared.keylist import TrustStore
from shared.keys import PublicKey, public_from_pem
from shared.mqtt.client import MqttClient, MqttSettings
from shared.mqtt.envelope import SCHEMA_EVENT, SCHEMA_STATUS, SCHEMA_TELEMETRY, Envelope, encode
from shared.mqtt.topics import device_topic, fleet_filter, parse_topic

log = logging.getLogger(__name__)

DEVICES_PER_CONNECTION = 500
ENROLL_CONCURRENCY = 16
STATE_FILE = "sim-devices.json"


@dataclass
class SimSettings:
    """What to simulate and where."""

    cp_url: str
    token: str
    devices: int
    mqtt_url: str | None = None  # default: what enrollment answers
    state_dir: Path | None = None
    prefix: str = "sim"
    groups: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    backends: dict[str, float] = field(default_factory=lambda: {"x86-cpu": 1.0})
    behaviours: dict[int, VersionBehaviour] = field(default_factory=dict)
    telemetry_interval_s: float = 10.0
    requests_per_s: float = 5.0  # per device and model
    long_poll_s: float = 30.0
    seed: int = 0
    tls: ssl.SSLContext | None = None  # checks an https:// control plane (None: system CAs)


@dataclass
class SimDevice:
    """One simulated device: its identity and what it runs."""

    device_id: str
    key: DeviceKey
    backend_class: str
    trust: TrustStore
    # Sequence numbers must not repeat across runs of the simulator (the ingest stores a
    # (device, seq) pair once): start from the clock in milliseconds rather than from 0.
    seq: int = field(default_factory=lambda: int(time.time() * 1000))
    serial: int = 0
    etag: str | None = None
    models: dict[str, tuple[int, str, str]] = field(
        default_factory=dict
    )  # name: (v, digest, state)

    def next_seq(self) -> int:
        """The next message sequence number."""
        self.seq += 1
        return self.seq


class FleetSimulator:
    """Enrolls and runs the simulated devices until stopped."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.devices: list[SimDevice] = []
        self.rng = random.Random(settings.seed)
        self.mqtt_url = settings.mqtt_url
        self.api_url = settings.cp_url.rstrip("/")
        self._clients: list[MqttClient] = []
        self._wake: dict[str, asyncio.Event] = {}
        self.counts = {"assignments": 0, "activations": 0, "failures": 0, "telemetry": 0}

    async def enroll(self) -> None:
        """Enroll the devices not yet in the state directory (a few at a time)."""
        known = await asyncio.to_thread(self._load_state)
        missing = [
            f"{self.settings.prefix}-{i:05d}"
            for i in range(self.settings.devices)
            if f"{self.settings.prefix}-{i:05d}" not in known
        ]
        self.devices = [known[d] for d in sorted(known)][: self.settings.devices]
        if not missing:
            return
        print(f"enrolling {len(missing)} simulated devices ...", flush=True)
        limit = asyncio.Semaphore(ENROLL_CONCURRENCY)
        async with ControlPlaneClient(
            self.api_url, self.settings.token, tls=self.settings.tls
        ) as client:

            async def one(device_id: str) -> SimDevice:
                async with limit:
                    return await self._enroll_one(client, device_id)

            enrolled = await asyncio.gather(*(one(d) for d in missing))
        self.devices = sorted([*self.devices, *enrolled], key=lambda d: d.device_id)
        await asyncio.to_thread(self._save_state)
        print(f"{len(self.devices)} devices enrolled", flush=True)

    async def _enroll_one(self, client: ControlPlaneClient, device_id: str) -> SimDevice:
        backend = self._pick_backend()
        body = {"groups": list(self.settings.groups), "labels": self.settings.labels}
        secret = (await client.post("/enroll-tokens", body))["secret"]
        key = await asyncio.to_thread(DeviceKey.generate)
        csr = await asyncio.to_thread(key.csr, device_id)
        answer = await client.call(
            "POST",
            "/enroll",
            json={
                "token": secret,
                "device_id": device_id,
                "csr": csr.decode(),
                "hardware": BACKEND_HARDWARE[backend],
            },
        )
        self.mqtt_url = self.mqtt_url or answer.get("mqtt_url")
        trust = _trust_from(answer)
        return SimDevice(device_id, key, backend, trust)

    def _pick_backend(self) -> str:
        classes = sorted(self.settings.backends)
        weights = [self.settings.backends[c] for c in classes]
        return self.rng.choices(classes, weights)[0]

    def _state_path(self) -> Path | None:
        return self.settings.state_dir / STATE_FILE if self.settings.state_dir else None

    def _load_state(self) -> dict[str, SimDevice]:
        path = self._state_path()
        if path is None or not path.is_file():
            return {}
        document = json.loads(path.read_text())
        if document.get("cp") != self.api_url:
            return {}  # identities from another control plane
        self.mqtt_url = self.mqtt_url or document.get("mqtt_url")
        devices = {}
        for item in document["devices"]:
            trust = TrustStore.bootstrap(
                PublicKey.from_json(item["root"]), item["keylist"].encode()
            )
            private = serialization.load_pem_private_key(item["key"].encode(), None)
            if not isinstance(private, ec.EllipticCurvePrivateKey | Ed25519PrivateKey):
                raise ApiCallFailed(f"{path}: {item['id']} has an unusable key; delete the file")
            key = DeviceKey(private)
            devices[item["id"]] = SimDevice(item["id"], key, item["backend"], trust)
        return devices

    def _save_state(self) -> None:
        path = self._state_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "cp": self.api_url,
            "mqtt_url": self.mqtt_url,
            "devices": [
                {
                    "id": d.device_id,
                    "backend": d.backend_class,
                    "key": d.key.to_pem().decode(),
                    "root": d.trust.key_list.root.as_json(),
                    "keylist": d.trust.to_document().decode(),
                }
                for d in self.devices
            ],
        }
        write_atomic(path, json.dumps(document).encode(), mode=0o600)

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> None:
        """Connect, report presence, follow assignments and report telemetry until `stop`."""
        _raise_file_limit(len(self.devices) + 256)
        if not self.mqtt_url:
            raise ApiCallFailed("no broker URL: give --mqtt (enrollment did not name one)")
        await self._connect()
        tls = self.settings.tls
        connector = aiohttp.TCPConnector(limit=0, ssl=tls if tls is not None else True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            for device in self.devices:
                self._wake[device.device_id] = asyncio.Event()
                await self._status(device)
            tasks = [
                asyncio.create_task(self._follow(http, device), name=f"sim-{device.device_id}")
                for device in self.devices
            ]
            tasks.append(asyncio.create_task(self._telemetry(stop), name="sim-telemetry"))
            print(f"{len(self.devices)} devices online; Ctrl-C stops", flush=True)
            try:
                if duration_s is None:
                    await stop.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), duration_s)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for device in self.devices:
                    await self._publish(device, "status", SCHEMA_STATUS, {"state": "offline"}, True)
                for client in self._clients:
                    await client.stop()

    async def _connect(self) -> None:
        assert self.mqtt_url is not None
        count = max(1, math.ceil(len(self.devices) / DEVICES_PER_CONNECTION))
        for index in range(count):
            client = MqttClient(
                MqttSettings(
                    url=self.mqtt_url,
                    client_id=f"edgefleet-sim-{self.settings.prefix}-{index}-{id(self)}",
                )
            )
            await client.start()
            self._clients.append(client)
        await asyncio.gather(*(c.wait_connected(30) for c in self._clients))
        commands = self._clients[0]
        commands.on_message.append(self._on_command)
        await commands.subscribe(fleet_filter("cmd"))

    def _on_command(self, message: Any) -> None:
        """A `sync` (or any) command wakes the device's assignment poll."""
        with contextlib.suppress(EdgeFleetError):
            device_id = parse_topic(message.topic).ident
            if device_id in self._wake:
                self._wake[device_id].set()

    def _client_for(self, device: SimDevice) -> MqttClient:
        index = int(device.device_id.rsplit("-", 1)[-1]) if device.device_id[-1:].isdigit() else 0
        return self._clients[(index // DEVICES_PER_CONNECTION) % len(self._clients)]

    async def _publish(
        self,
        device: SimDevice,
        kind: str,
        schema: str,
        payload: dict[str, Any],
        retain: bool = False,
    ) -> None:
        envelope = Envelope(schema, device.device_id, device.next_seq(), time.time(), payload)
        try:
            await self._client_for(device).publish(
                device_topic(device.device_id, kind), encode(envelope), qos=1, retain=retain
            )
        except EdgeFleetError as error:
            log.warning("%s: %s not published: %s", device.device_id, kind, error)

    async def _status(self, device: SimDevice) -> None:
        payload = status_report(device.backend_class, device.models)
        await self._publish(device, "status", SCHEMA_STATUS, payload, retain=True)

    async def _follow(self, http: aiohttp.ClientSession, device: SimDevice) -> None:
        """Long-poll the device's assignment and apply each new one."""
        path = f"/api/v1/devices/{device.device_id}/assignment"
        backoff = 1.0
        await asyncio.sleep(self.rng.uniform(0, min(2.0, len(self.devices) / 1000)))
        while True:
            wake = self._wake[device.device_id]
            wake.clear()
            query = f"?wait={self.settings.long_poll_s:g}" if device.etag else ""
            headers = sign_request(device.key, device.device_id, "GET", path + query)
            if device.etag:
                headers["If-None-Match"] = device.etag
            try:
                async with http.get(self.api_url + path + query, headers=headers) as response:
                    if response.status == 200:
                        await self._apply(device, await response.read(), response.headers)
                    elif response.status not in (304, 404):
                        log.warning("%s: assignment answered %d", device.device_id, response.status)
                        raise aiohttp.ClientError(f"status {response.status}")
                backoff = 1.0
            except (aiohttp.ClientError, TimeoutError, EdgeFleetError) as error:
                log.debug("%s: assignment poll failed: %s", device.device_id, error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), backoff * self.rng.uniform(0.5, 1))
                backoff = min(30.0, backoff * 2)

    async def _apply(self, device: SimDevice, document: bytes, headers: Any) -> None:
        try:
            assignment: Assignment = verify_assignment(
                document,
                device.trust,
                device_id=device.device_id,
                last_serial=device.serial,
                now=time.time(),
            )
        except EdgeFleetError as error:
            log.warning("%s: assignment refused: %s", device.device_id, error)
            return
        device.serial = assignment.serial
        device.etag = headers.get("ETag")
        self.counts["assignments"] += 1
        for model in assignment.models:
            current = device.models.get(model.name)
            if current is not None and current[1] == model.digest and current[2] == "READY":
                continue
            await self._activate(device, model.name, model.version, model.digest, current)
        for name in set(device.models) - {m.name for m in assignment.models}:
            del device.models[name]
        await self._status(device)

    async def _activate(
        self,
        device: SimDevice,
        name: str,
        version: int,
        digest: str,
        current: tuple[int, str, str] | None,
    ) -> None:
        behaviour = self.settings.behaviours.get(version, VersionBehaviour())
        previous = current[1] if current else None
        for state in ("downloading", "verifying", "staged", "validating", "warming"):
            await self._event(device, name, version, digest, previous, state)
        await asyncio.sleep(behaviour.activation_s)
        if behaviour.fails_on(device.device_id, version):
            self.counts["failures"] += 1
            await self._event(
                device, name, version, digest, previous, "failed", "simulated failure"
            )
            return
        self.counts["activations"] += 1
        await self._event(device, name, version, digest, previous, "probation")
        await self._event(device, name, version, digest, previous, "active")
        device.models[name] = (version, digest, "READY")

    async def _event(
        self,
        device: SimDevice,
        model: str,
        version: int,
        digest: str,
        previous: str | None,
        state: str,
        reason: str = "",
    ) -> None:
        payload = lifecycle_event(model, version, digest, previous, state, reason)
        await self._publish(device, "events", SCHEMA_EVENT, payload)

    async def _telemetry(self, stop: asyncio.Event) -> None:
        interval = self.settings.telemetry_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for device in self.devices:
                if device.models:
                    await self._publish(
                        device, "telemetry", SCHEMA_TELEMETRY, self._figures(device, interval)
                    )
                    self.counts["telemetry"] += 1

    def _figures(self, device: SimDevice, interval: float) -> dict[str, Any]:
        return telemetry_report(
            device.backend_class,
            device.models,
            self.settings.behaviours,
            self.settings.requests_per_s * interval,
            interval,
            self.rng,
        )


def _trust_from(answer: dict[str, Any]) -> TrustStore:
    root = public_from_pem(answer["root_key"].encode(), "the enrollment answer's root_key")
    return TrustStore.bootstrap(root, answer["keylist"].encode())


def _raise_file_limit(wanted: int) -> None:
    """Long polls hold one socket per device: lift the soft descriptor limit toward the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
