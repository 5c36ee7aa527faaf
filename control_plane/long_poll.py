"""Waking the long polls that wait for a key (a device id) to change, without losing a wake-up.

A waiter takes the key's current event *before* it reads the state it compares against; a
change is committed *before* `notify` sets and drops that event. Whatever the interleaving,
a waiter either reads the new state or finds its event set, so no change slips between its
read and its wait, and nobody polls in a loop. Only this process's waiters are woken: a change
made by another replica reaches them when their wait ends (and via the device's `sync` command).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class ChangeBoard:
    """One `asyncio.Event` per watched key, set (and replaced) at each change of the key."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._watchers: Counter[str] = Counter()
        self.closed = False

    @property
    def watchers(self) -> int:
        """How many waits are registered now, over every key."""
        return self._watchers.total()

    def watching(self, key: str) -> int:
        """How many waits are registered for `key` now."""
        return self._watchers[key]

    @contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        """The event the next change of `key` sets; take it before reading the state."""
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        if self.closed:
            event.set()
        self._watchers[key] += 1
        try:
            yield event
        finally:
            self._watchers[key] -= 1
            if self._watchers[key] <= 0:
                del self._watchers[key]
                if self._events.get(key) is event:
                    del self._events[key]

    def notify(self, keys: Iterable[str]) -> None:
        """These keys changed (and the change is committed): wake their waiters."""
        for key in keys:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()

    def close(self) -> None:
        """Wake every waiter, now and from now on (the server is stopping)."""
        self.closed = True
        self.notify(list(self._events))
