"""Live parts of pages: one poller per application, fanned out to every open page.

A page marks each live part with its topic (`fleet`, `rollout:12`, `device:edge-1`) and the
version (a hash of the HTML) it was rendered with, and opens one server-sent-events stream for
them (`control_plane.dashboard.views.events`). The `LiveFeed` reads each topic that somebody
watches once per `interval_s`, from the database, however many pages watch it, renders it with
the same template and context builder as the page (once per role: the buttons differ), and
hands each subscriber the new HTML only when its version changed. A slow reader never queues
up: its subscription keeps the newest HTML per topic and nothing older. With nobody watching,
the feed does not touch the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from control_plane.db.engine import open_session
from control_plane.errors import ControlPlaneError
from control_plane.roles import Role, allows

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
MAX_TOPIC_CHARS = 160

Loader = Callable[[AsyncSession, str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Topic:
    """A live part of a page: how to load its data and which template draws it."""

    kind: str
    template: str
    load: Loader  # (session, argument) -> the template's context; argument "" when none
    argument: bool  # whether the topic names an object (`rollout:12`) or stands alone


@dataclass(frozen=True, slots=True)
class Fragment:
    """A live part rendered for one role, and its version."""

    topic: str
    html: Markup
    version: str


def role_context(role: Role) -> dict[str, Any]:
    """What templates may ask about the viewer's role (pages and live parts alike)."""
    return {
        "role": role.value,
        "can_operate": allows(role, Role.OPERATOR),
        "is_admin": allows(role, Role.ADMIN),
    }


def render_fragment(
    env: jinja2.Environment, topic: Topic, key: str, context: Mapping[str, Any], role: Role
) -> Fragment:
    """Render a live part; the version changes exactly when its HTML does."""
    html = env.get_template(topic.template).render({**context, **role_context(role)})
    version = hashlib.sha256(html.encode()).hexdigest()[:16]
    return Fragment(key, Markup(html), version)


class Subscription:
    """One open stream: its viewer's role, the versions it has, and what is new for it."""

    def __init__(self, role: Role, versions: Mapping[str, str]) -> None:
        self.role = role
        self.versions = dict(versions)  # topic -> version the page shows
        self.pending: dict[str, str] = {}  # topic -> newer HTML not yet sent
        self.closed = False
        self._ready = asyncio.Event()

    @property
    def topics(self) -> list[str]:
        """The topics this stream follows."""
        return list(self.versions)

    def offer(self, fragment: Fragment) -> None:
        """Queue `fragment` unless the page already shows that version."""
        if self.versions.get(fragment.topic) != fragment.version:
            self.versions[fragment.topic] = fragment.version
            self.pending[fragment.topic] = str(fragment.html)
            self._ready.set()

    def close(self) -> None:
        """End the stream (the server is stopping)."""
        self.closed = True
        self._ready.set()

    async def updates(self) -> dict[str, str] | None:
        """What changed since the last call; None once closed. Wrap it in `asyncio.timeout`."""
        await self._ready.wait()
        self._ready.clear()
        if self.closed:
            return None
        pending, self.pending = self.pending, {}
        return pending


class LiveFeed:
    """Polls the watched topics once per interval and offers changes to their subscribers."""

    def __init__(
        self,
        engine: AsyncEngine,
        env: jinja2.Environment,
        topics: Mapping[str, Topic],
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.engine = engine
        self.env = env
        self.topics = dict(topics)
        self.interval_s = interval_s
        self._subscriptions: set[Subscription] = set()
        self._watched = asyncio.Event()
        self._wake = asyncio.Event()
        self._closed = False
        self._failing = False

    def parse(self, key: str) -> tuple[Topic, str] | None:
        """The topic and argument `key` names, or None when it names no known topic."""
        kind, sep, argument = key.partition(":")
        topic = self.topics.get(kind)
        if topic is None or len(key) > MAX_TOPIC_CHARS or bool(sep) != topic.argument:
            return None
        if sep and (not argument or not argument.isprintable() or " " in argument):
            return None
        return topic, argument

    def subscribe(self, role: Role, versions: Mapping[str, str]) -> Subscription:
        """A new stream of the topics in `versions` (already closed if the feed is)."""
        subscription = Subscription(role, versions)
        if self._closed:
            subscription.close()
        else:
            self._subscriptions.add(subscription)
            self._watched.set()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop offering to a stream that ended."""
        self._subscriptions.discard(subscription)
        if not self._subscriptions:
            self._watched.clear()

    def wake(self) -> None:
        """Tick now rather than at the end of the interval (an operator just changed something)."""
        self._wake.set()

    def close(self) -> None:
        """End every stream now, and any opened later: the server is shutting down."""
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.close()
        self._subscriptions.clear()

    async def run(self) -> None:
        """Tick every `interval_s` while anybody watches, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._watched.wait()
            self._wake.clear()
            started = loop.time()
            await self.tick()
            left = self.interval_s - (loop.time() - started)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._wake.wait()

    async def tick(self) -> None:
        """Load each watched topic once and offer it to its subscribers."""
        watchers: dict[str, list[Subscription]] = {}
        for subscription in self._subscriptions:
            for key in subscription.topics:
                watchers.setdefault(key, []).append(subscription)
        failed = False
        for key, subscriptions in watchers.items():
            parsed = self.parse(key)
            if parsed is None:
                continue
            topic, argument = parsed
            try:
                async with open_session(self.engine) as session:
                    context = await topic.load(session, argument)
            except ControlPlaneError as error:
                failed = True
                if not self._failing:  # log when it starts failing, not every second
                    log.warning("live updates of %s failed: %s", key, error)
                continue
            rendered: dict[Role, Fragment] = {}
            for subscription in subscriptions:
                role = subscription.role
                if role not in rendered:
                    rendered[role] = render_fragment(self.env, topic, key, context, role)
                subscription.offer(rendered[role])
        self._failing = failed
