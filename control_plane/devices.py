"""The device inventory: filtered, paged listing, one device, groups and labels, revocation.

Every filter is a SQL condition (indexed columns, or an EXISTS probe on the primary keys of
`device_groups` and `device_labels`), so a page costs the same at ten devices as at ten
thousand. Revoking a device also revokes each of its certificates; the caller rewrites the CRL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import Device, DeviceCertificate, DeviceGroup, DeviceLabel
from control_plane.errors import UnknownDevice


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Which devices to list; every given condition must hold."""

    group: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    online: bool | None = None
    backend: str | None = None
    region: str | None = None
    model: str | None = None  # a model the device reported serving
    version: int | None = None  # with `model`: reported serving this version of it
    search: str | None = None  # a substring of the device id


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of devices (ordered by id), their groups and labels, and the total count."""

    devices: Sequence[Device]
    groups: Mapping[str, list[str]]
    labels: Mapping[str, dict[str, str]]
    total: int


@dataclass(frozen=True, slots=True)
class GroupCount:
    """A group and how many of its (not revoked) devices are online and offline."""

    name: str
    online: int
    offline: int


async def list_devices(
    session: AsyncSession, filters: DeviceFilter, limit: int, offset: int, after: str | None
) -> DevicePage:
    """Devices matching `filters`, ordered by id: after the id `after`, or from `offset`."""
    conditions = _conditions(session, filters)
    total = await session.scalar(select(func.count()).select_from(Device).where(*conditions))
    query = select(Device).where(*conditions)
    if after is not None:
        query = query.where(Device.id > after)
    rows = (await session.scalars(query.order_by(Device.id).offset(offset).limit(limit))).all()
    ids = [device.id for device in rows]
    return DevicePage(
        rows, await groups_of(session, ids), await labels_of(session, ids), total or 0
    )


def _conditions(session: AsyncSession, filters: DeviceFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.group is not None:
        conditions.append(
            exists().where(DeviceGroup.device_id == Device.id, DeviceGroup.group == filters.group)
        )
    for key, value in filters.labels:
        conditions.append(
            exists().where(
                DeviceLabel.device_id == Device.id,
                DeviceLabel.key == key,
                DeviceLabel.value == value,
            )
        )
    if filters.online is not None:
        conditions.append(Device.online.is_(filters.online))
    if filters.backend is not None:
        conditions.append(Device.backend_class == filters.backend)
    if filters.region is not None:
        conditions.append(Device.region == filters.region)
    if filters.search:
        conditions.append(Device.id.contains(filters.search, autoescape=True))
    if filters.model is not None:
        dialect = session.get_bind().dialect.name
        conditions.append(_serves_model(dialect, filters.model, filters.version))
    return conditions


def _reported_models(dialect: str) -> tuple[Any, ColumnElement[Any], ColumnElement[Any]]:
    """`devices.models` (a JSON array of {"model": name, "version": v, ...}) as rows.

    Returns the table-valued function and its name and version columns; on PostgreSQL the
    version is text (`json_extract_path_text`), on SQLite the JSON number.
    """
    if dialect == "postgresql":
        elements = func.json_array_elements(Device.models).table_valued("value")
        name = func.json_extract_path_text(elements.c.value, "model")
        version = func.json_extract_path_text(elements.c.value, "version")
    else:
        elements = func.json_each(Device.models).table_valued("value")
        name = func.json_extract(elements.c.value, "$.model")
        version = func.json_extract(elements.c.value, "$.version")
    return elements, name, version


def _serves_model(dialect: str, model: str, version: int | None) -> ColumnElement[bool]:
    """Whether the device reported serving `model` (at `version`, when given)."""
    elements, name, reported = _reported_models(dialect)
    query = exists().select_from(elements).where(name == model)
    if version is not None:
        query = query.where(reported == (str(version) if dialect == "postgresql" else version))
    return query


async def get_device(session: AsyncSession, device_id: str) -> Device:
    """The device `device_id`, or `UnknownDevice`."""
    device = await session.get(Device, device_id)
    if device is None:
        raise UnknownDevice(f"no device has id {device_id!r}")
    return device


async def groups_of(session: AsyncSession, ids: Sequence[str]) -> dict[str, list[str]]:
    """Each device's groups, sorted (every id in `ids` is a key)."""
    found: dict[str, list[str]] = {device_id: [] for device_id in ids}
    if ids:
        rows = await session.execute(
            select(DeviceGroup.device_id, DeviceGroup.group)
            .where(DeviceGroup.device_id.in_(ids))
            .order_by(DeviceGroup.device_id, DeviceGroup.group)
        )
        for device_id, group in rows:
            found[device_id].append(group)
    return found


async def labels_of(session: AsyncSession, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each device's labels (every id in `ids` is a key)."""
    found: dict[str, dict[str, str]] = {device_id: {} for device_id in ids}
    if ids:
        rows = await session.execute(
            select(DeviceLabel.device_id, DeviceLabel.key, DeviceLabel.value)
            .where(DeviceLabel.device_id.in_(ids))
            .order_by(DeviceLabel.device_id, DeviceLabel.key)
        )
        for device_id, key, value in rows:
            found[device_id][key] = value
    return found


async def certificates_of(session: AsyncSession, device_id: str) -> Sequence[DeviceCertificate]:
    """The device's certificates, oldest first."""
    query = select(DeviceCertificate).where(DeviceCertificate.device_id == device_id)
    return (await session.scalars(query.order_by(DeviceCertificate.issued_at))).all()


async def set_groups(session: AsyncSession, device_id: str, groups: Iterable[str]) -> None:
    """Replace the device's groups."""
    await session.execute(delete(DeviceGroup).where(DeviceGroup.device_id == device_id))
    session.add_all(DeviceGroup(device_id=device_id, group=g) for g in sorted(set(groups)))
    await session.flush()


async def set_labels(session: AsyncSession, device_id: str, labels: Mapping[str, str]) -> None:
    """Replace the device's labels."""
    await session.execute(delete(DeviceLabel).where(DeviceLabel.device_id == device_id))
    session.add_all(
        DeviceLabel(device_id=device_id, key=k, value=v) for k, v in sorted(labels.items())
    )
    await session.flush()


async def revoke_device(session: AsyncSession, device: Device, now: datetime) -> int:
    """Revoke the device and every certificate of it not yet revoked; return how many."""
    if device.revoked_at is None:
        device.revoked_at = now
    result = await session.execute(
        update(DeviceCertificate)
        .where(DeviceCertificate.device_id == device.id, DeviceCertificate.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(DeviceCertificate.serial)
    )
    return len(result.all())


async def revoked_serials(session: AsyncSession) -> list[tuple[str, datetime]]:
    """Every revoked certificate: (serial hex, revoked at)."""
    rows = await session.execute(
        select(DeviceCertificate.serial, DeviceCertificate.revoked_at)
        .where(DeviceCertificate.revoked_at.is_not(None))
        .order_by(DeviceCertificate.serial)
    )
    return [(serial, when) for serial, when in rows if when is not None]


async def group_counts(session: AsyncSession) -> list[GroupCount]:
    """Every group with its online and offline device counts (revoked devices not counted)."""
    online = func.sum(case((Device.online.is_(true()), 1), else_=0))
    rows = await session.execute(
        select(DeviceGroup.group, func.count(), online)
        .join(Device, and_(Device.id == DeviceGroup.device_id, Device.revoked_at.is_(None)))
        .group_by(DeviceGroup.group)
        .order_by(DeviceGroup.group)
    )
    return [GroupCount(name, int(up or 0), int(count) - int(up or 0)) for name, count, up in rows]


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """Not revoked devices online and offline: in all, per region and per backend class."""

    online: int
    offline: int
    regions: list[GroupCount]  # name "" for devices without a region
    backends: list[GroupCount]


async def fleet_counts(session: AsyncSession) -> FleetCounts:
    """One grouped scan of `devices`, summed per region and per backend class."""
    rows = await session.execute(
        select(Device.region, Device.backend_class, Device.online, func.count())
        .where(Device.revoked_at.is_(None))
        .group_by(Device.region, Device.backend_class, Device.online)
    )
    regions: dict[str, list[int]] = {}
    backends: dict[str, list[int]] = {}
    totals = [0, 0]
    for region, backend, online, count in rows:
        slot = 0 if online else 1
        regions.setdefault(region or "", [0, 0])[slot] += count
        backends.setdefault(backend, [0, 0])[slot] += count
        totals[slot] += count
    return FleetCounts(totals[0], totals[1], _as_counts(regions), _as_counts(backends))


def _as_counts(found: dict[str, list[int]]) -> list[GroupCount]:
    return [GroupCount(name, up, down) for name, (up, down) in sorted(found.items())]


@dataclass(frozen=True, slots=True)
class VersionCount:
    """How many (not revoked) devices reported one version of one model."""

    model: str
    version: int
    devices: int


async def version_counts(session: AsyncSession) -> list[VersionCount]:
    """Devices per reported (model, version), by model then version.

    Grouped by the reported list itself: a fleet reports few distinct lists, so the database
    counts equal texts (an index-free GROUP BY over one column) and only each distinct list is
    read here, instead of every device's JSON being taken apart row by row.
    """
    rows = await session.execute(
        select(cast(Device.models, Text), func.count())
        .where(Device.revoked_at.is_(None))
        .group_by(cast(Device.models, Text))
    )
    counts: Counter[tuple[str, int]] = Counter()
    for text, devices in rows:
        for pair in _reported_pairs(orjson.loads(text) if text else []):
            counts[pair] += devices  # a device reporting both versions of a probation: each
    return [VersionCount(m, v, counts[(m, v)]) for m, v in sorted(counts)]


def _reported_pairs(reported: Any) -> set[tuple[str, int]]:
    """The (model, version) pairs in a status's `models` list, each once."""
    if not isinstance(reported, list):
        return set()
    return {
        (entry["model"], entry["version"])
        for entry in reported
        if isinstance(entry, dict)
        and isinstance(entry.get("model"), str)
        and type(entry.get("version")) is int
    }


def describe_device(device: Device, groups: list[str], labels: dict[str, str]) -> dict[str, Any]:
    """What the audit log records of a device's settable state."""
    return {
        "id": device.id,
        "groups": groups,
        "labels": labels,
        "region": device.region,
        "revoked_at": device.revoked_at.isoformat() if device.revoked_at else None,
    }
