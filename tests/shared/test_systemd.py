"""The sd_notify protocol against a real AF_UNIX datagram socket, and the watchdog heartbeat."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Iterator

import pytest

from shared.systemd import (
    ServiceHeartbeat,
    SystemdNotifier,
    SystemdSettings,
    notify_address,
    notifying_systemd,
    watchdog_interval,
)
from tests.shared.notify_socket import NotifyListener, has


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    with NotifyListener() as bound:
        yield bound


class Health:
    """A liveness check the test turns on and off, counting how often it was asked."""

    def __init__(self) -> None:
        self.alive = True
        self.hang = False
        self.calls = 0
        self.asked = asyncio.Event()

    async def __call__(self) -> bool:
        self.calls += 1
        self.asked.set()
        if self.hang:
            await asyncio.Event().wait()
        return self.alive

    async def asked_times(self, count: int) -> None:
        """Wait until the check has been started `count` more times."""
        target = self.calls + count
        async with asyncio.timeout(10):
            while self.calls < target:
                self.asked.clear()
                await self.asked.wait()


async def test_ready_carries_status_and_main_pid(listener: NotifyListener) -> None:
    with SystemdNotifier(listener.notify_socket) as notifier:
        assert notifier.ready("serving 2 models", main_pid=os.getpid())
        assert await listener.next() == {
            "READY": "1",
            "STATUS": "serving 2 models",
            "MAINPID": str(os.getpid()),
        }
        assert notifier.status("waiting for an assignment")
        assert await listener.next() == {"STATUS": "waiting for an assignment"}
        assert notifier.watchdog()
        assert await listener.next() == {"WATCHDOG": "1"}
        assert notifier.stopping("stopping")
        assert await listener.next() == {"STOPPING": "1", "STATUS": "stopping"}


async def test_an_abstract_socket_is_reached_through_its_at_sign() -> None:
    with (
        NotifyListener(abstract=True) as listener,
        SystemdNotifier(listener.notify_socket) as notifier,
    ):
        assert listener.notify_socket.startswith("@")
        assert notifier.ready()
        assert await listener.next() == {"READY": "1"}


async def test_a_status_keeps_to_one_line(listener: NotifyListener) -> None:
    with SystemdNotifier(listener.notify_socket) as notifier:
        notifier.status("model failed:\nbad input\nshape")
        assert await listener.next() == {"STATUS": "model failed: bad input shape"}


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier("")
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()
    notifier.close()


def test_addresses() -> None:
    assert notify_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert notify_address("@/org/systemd/x") == b"\0/org/systemd/x"
    assert notify_address("relative/path") is None
    assert notify_address("vsock:2:1234") is None
    assert notify_address("@") is None
    assert not SystemdNotifier("relative/path").enabled


async def test_a_vanished_socket_is_logged_once_and_never_raises(
    listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    with SystemdNotifier(listener.notify_socket) as notifier:
        listener.close()
        with caplog.at_level(logging.WARNING, logger="shared.systemd"):
            assert not notifier.watchdog()
            assert not notifier.watchdog()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


async def test_a_full_socket_drops_messages_instead_of_blocking(listener: NotifyListener) -> None:
    # Nobody reads: the receiver's queue fills, and a blocking send would hang the loop here
    # (the conftest guard fails any test whose loop blocks).
    with SystemdNotifier(listener.notify_socket) as notifier:
        sent = [notifier.watchdog() for _ in range(2000)]
    assert sent[0]
    assert not all(sent)


def test_the_watchdog_interval_is_half_of_watchdog_sec() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}, pid) == 15.0
    # Meant for another process (we inherited the environment): not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval({}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"}, pid) is None


def test_settings_come_from_the_environment() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000"}
    assert SystemdSettings.from_env(env, os.getpid()) == SystemdSettings("@x", 1.0)
    assert SystemdSettings.from_env({}, os.getpid()) == SystemdSettings()


async def test_the_watchdog_is_pinged_only_while_healthy(listener: NotifyListener) -> None:
    health = Health()
    with SystemdNotifier(listener.notify_socket) as notifier:
        heartbeat = ServiceHeartbeat(notifier, 0.01, health)
        heartbeat.start()
        try:
            for _ in range(3):
                assert await listener.next() == {"WATCHDOG": "1"}
            health.alive = False
            # Two checks started after the change: the first of them has finished, so no ping
            # can be on its way any more; whatever was sent before is drained.
            await health.asked_times(2)
            listener.drain()
            await health.asked_times(3)
            assert not [m for m in listener.drain() if "WATCHDOG" in m]
            health.alive = True
            assert await listener.next() == {"WATCHDOG": "1"}
        finally:
            await heartbeat.stop()


async def test_a_check_that_hangs_counts_as_unhealthy(listener: NotifyListener) -> None:
    health = Health()
    health.hang = True
    with SystemdNotifier(listener.notify_socket) as notifier:
        heartbeat = ServiceHeartbeat(notifier, 0.01, health)
        heartbeat.start()
        try:
            await health.asked_times(3)  # each one timed out before the next began
            assert listener.drain() == []
        finally:
            await heartbeat.stop()


async def test_a_new_status_line_is_sent_once(listener: NotifyListener) -> None:
    lines = itertools.chain(
        ["loading: 0 of 1 models serving"] * 3, itertools.repeat("ready: serving 1 model")
    )
    with SystemdNotifier(listener.notify_socket) as notifier:
        heartbeat = ServiceHeartbeat(
            notifier, None, Health(), status=lambda: next(lines), status_poll_s=0.001
        )
        heartbeat.start()
        try:
            first = await listener.next()
            second = await listener.next()
        finally:
            await heartbeat.stop()
    assert first == {"STATUS": "loading: 0 of 1 models serving"}
    assert second == {"STATUS": "ready: serving 1 model"}
    assert listener.drain() == []


async def test_the_lifecycle_says_ready_then_stopping(listener: NotifyListener) -> None:
    settings = SystemdSettings(listener.notify_socket, 0.01)
    async with notifying_systemd(settings, Health(), lambda: "serving", main_pid=42):
        assert await listener.next() == {"READY": "1", "STATUS": "serving", "MAINPID": "42"}
        assert await listener.next() == {"WATCHDOG": "1"}
    stopping = await listener.next_matching(has("STOPPING"))
    assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
    # Nothing after STOPPING: the heartbeat has stopped.
    assert listener.drain() == []


async def test_the_lifecycle_does_nothing_outside_systemd() -> None:
    health = Health()
    async with notifying_systemd(SystemdSettings(), health, lambda: "serving", main_pid=1):
        await asyncio.sleep(0)
    assert health.calls == 0
