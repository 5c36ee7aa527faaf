"""Models: every version, where each runs, one version's manifest, and uploading a bundle.

The upload is the API's own `upload_model` (streamed to disk, verified against the key list,
stored content-addressed, audited): the page's script sends the file's bytes as the body, with
the session's CSRF token in a header, and shows the answer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from control_plane.api.models import upload_model, version_json
from control_plane.api.state import ENGINE
from control_plane.dashboard.access import Page
from control_plane.dashboard.render import render
from control_plane.dashboard.views.rollouts import rollouts_in
from control_plane.db.engine import open_session
from control_plane.db.models import BundleRecord, Rollout
from control_plane.devices import version_counts
from control_plane.errors import UnknownModel
from control_plane.rollouts import ACTIVE

ROLLOUTS_SHOWN = 20


async def model_list(request: web.Request) -> web.Response:
    """Every model with its versions, how many devices run each, and rollouts under way."""
    async with open_session(request.app[ENGINE]) as session:
        records = await session.scalars(
            select(BundleRecord).order_by(BundleRecord.name, BundleRecord.version.desc())
        )
        models: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            models.setdefault(record.name, []).append(version_json(record))
        running = {(c.model, c.version): c.devices for c in await version_counts(session)}
        active = await rollouts_in(session, tuple(ACTIVE), 50)
    rolling = {(r["model"], r["version"]): r["id"] for r in active}
    return render(
        request,
        "models/list.html",
        {"models": models, "running": running, "rolling": rolling},
    )


async def version_page(request: web.Request) -> web.Response:
    """One version: its signature, manifest, variants, where it runs and its rollouts."""
    name, raw = request.match_info["name"], request.match_info["version"]
    version = int(raw) if raw.isdigit() else -1
    async with open_session(request.app[ENGINE]) as session:
        record = await session.scalar(
            select(BundleRecord).where(BundleRecord.name == name, BundleRecord.version == version)
        )
        if record is None:
            raise UnknownModel(f"no model {name!r} version {raw!r}")
        counts = [c for c in await version_counts(session) if c.model == name]
        rollouts = list(
            await session.scalars(
                select(Rollout)
                .where(Rollout.model == name, Rollout.version == version)
                .order_by(Rollout.id.desc())
                .limit(ROLLOUTS_SHOWN)
            )
        )
        body = {**version_json(record), "manifest": record.manifest}
    return render(
        request,
        "models/version.html",
        {"record": body, "manifest": body["manifest"], "counts": counts, "rollouts": rollouts},
    )


async def upload(request: web.Request) -> web.StreamResponse:
    """Take a signed bundle from the page's script: exactly what `POST /api/v1/models` does."""
    return await upload_model(request)


PAGES = (
    Page("GET", "/models", model_list),
    Page("GET", "/models/{name}/versions/{version}", version_page),
    Page("POST", "/models/upload", upload, api="POST /api/v1/models"),
)
