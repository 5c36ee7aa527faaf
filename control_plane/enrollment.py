"""Enrollment: one-time tokens, and turning a token plus a CSR into an enrolled device.

A token is issued with the groups, labels and region its device will get; only its SHA-256 is
stored (as for operator tokens). Redeeming it is one transaction: check the token, refuse a
device id that is enrolled and not revoked, claim the token with
`UPDATE ... WHERE used_at IS NULL` (so of two concurrent redemptions exactly one wins), sign
the CSR, and write the device, its groups, labels and certificate. Any failure rolls the whole
transaction back, so a refused enrollment leaves the token unused.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from control_plane import audit
from control_plane.ca import CertificateAuthority, IssuedCertificate, check_csr
from control_plane.db.models import Device, DeviceCertificate, EnrollmentToken
from control_plane.devices import set_groups, set_labels
from control_plane.errors import DeviceExists, EnrollmentRefused
from control_plane.tokens import hash_secret
from shared.device_key import check_device_public_key, public_key_pem

# Tells an enrollment token from an operator token (`ef_`) at a glance and to secret scanners.
ENROLL_TOKEN_PREFIX = "efe_"
SECRET_BYTES = 32
_NEW_TOKEN_HINT = "ask an operator for a new one (`POST /api/v1/enroll-tokens`)"


class TokenState(enum.Enum):
    """Where a token is in its life: unused -> used, or unused -> expired; both are final."""

    UNUSED = "unused"
    USED = "used"
    EXPIRED = "expired"


def token_state(token: EnrollmentToken, now: datetime) -> TokenState:
    """The token's state at `now`."""
    if token.used_at is not None:
        return TokenState.USED
    if token.expires_at <= now:
        return TokenState.EXPIRED
    return TokenState.UNUSED


@dataclass(frozen=True, slots=True)
class DevicePreset:
    """What an enrolling device is given: its groups, labels and region (already validated)."""

    groups: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A successful enrollment: the device, its certificate and the token it used."""

    device: Device
    certificate: IssuedCertificate
    token: EnrollmentToken
    preset: DevicePreset


async def issue_enrollment_token(
    session: AsyncSession, created_by: str, preset: DevicePreset, ttl_s: float, now: datetime
) -> tuple[EnrollmentToken, str]:
    """Add a token valid for `ttl_s`, audited as `created_by`'s; return its row and the secret.

    The secret is never stored, only its hash.
    """
    secret = ENROLL_TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    token = EnrollmentToken(
        token_hash=hash_secret(secret),
        created_at=now,
        created_by=created_by,
        expires_at=now + timedelta(seconds=ttl_s),
        groups=list(preset.groups),
        labels=dict(preset.labels),
        region=preset.region,
    )
    session.add(token)
    await session.flush()
    await audit.record(
        session,
        created_by,
        "enroll_token.create",
        f"enroll-token:{token.id}",
        None,
        describe_token(token, now),
    )
    return token, secret


async def list_enrollment_tokens(session: AsyncSession) -> Sequence[EnrollmentToken]:
    """Every enrollment token, oldest first."""
    return (await session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id))).all()


def describe_token(token: EnrollmentToken, now: datetime) -> dict[str, Any]:
    """A token as the API and the audit log show it: never the secret or its hash."""
    return {
        "id": token.id,
        "state": token_state(token, now).value,
        "created_at": token.created_at.isoformat(),
        "created_by": token.created_by,
        "expires_at": token.expires_at.isoformat(),
        "groups": list(token.groups),
        "labels": dict(token.labels),
        "region": token.region,
        "used_at": token.used_at.isoformat() if token.used_at else None,
        "used_by": token.used_by,
    }


async def enroll_device(
    session: AsyncSession,
    ca: CertificateAuthority,
    *,
    secret: str,
    device_id: str,
    csr_pem: str,
    hardware: dict[str, Any] | None,
    certificate_days: int,
    now: datetime,
) -> Enrollment:
    """Redeem `secret` for `device_id`: claim the token, sign the CSR, record the device."""
    public_key = check_device_public_key(check_csr(csr_pem, device_id).public_key(), "csr")
    token = await _usable_token(session, secret, now)
    device = await session.get(Device, device_id)
    if device is not None and device.revoked_at is None:
        raise DeviceExists(
            f"device {device_id} is already enrolled; an admin must revoke it first "
            f"(POST /api/v1/devices/{device_id}/revoke), or enroll under another device id"
        )
    await _claim(session, token, device_id, now)
    issued = await asyncio.to_thread(ca.issue, csr_pem, device_id, certificate_days, now)
    preset = DevicePreset(tuple(token.groups), dict(token.labels), token.region)
    if device is None:
        device = Device(id=device_id)
        session.add(device)
    # A revoked device enrolling again keeps its id and history, with a new key and presets.
    device.region = preset.region
    device.enrolled_at = now
    device.public_key = public_key_pem(public_key)
    device.revoked_at = None
    device.online = False
    device.hardware = hardware
    try:
        await session.flush()
    except IntegrityError:
        # Another enrollment of the same id (with another token) committed first.
        raise DeviceExists(
            f"device {device_id} was enrolled concurrently; revoke it first"
        ) from None
    session.add(
        DeviceCertificate(
            serial=issued.serial,
            device_id=device_id,
            issued_at=now,
            not_after=issued.not_after,
            pem=issued.pem,
        )
    )
    await set_groups(session, device_id, preset.groups)
    await set_labels(session, device_id, preset.labels)
    return Enrollment(device, issued, token, preset)


async def _usable_token(session: AsyncSession, secret: str, now: datetime) -> EnrollmentToken:
    token = None
    if secret.startswith(ENROLL_TOKEN_PREFIX):
        token = await session.scalar(
            select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_secret(secret))
        )
    if token is None:
        raise EnrollmentRefused(f"the enrollment token is unknown; {_NEW_TOKEN_HINT}")
    state = token_state(token, now)
    if state is TokenState.USED:
        raise EnrollmentRefused(
            f"the enrollment token was already used (by device {token.used_by}); a token "
            f"enrolls one device only; {_NEW_TOKEN_HINT}"
        )
    if state is TokenState.EXPIRED:
        raise EnrollmentRefused(
            f"the enrollment token expired at {token.expires_at.isoformat()}; {_NEW_TOKEN_HINT}"
        )
    return token


async def _claim(
    session: AsyncSession, token: EnrollmentToken, device_id: str, now: datetime
) -> None:
    """Mark the token used, unless a concurrent redemption already did (then refuse)."""
    result = await session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == token.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now, used_by=device_id)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], result).rowcount != 1:
        raise EnrollmentRefused(
            f"the enrollment token was used by another enrollment at the same moment; "
            f"{_NEW_TOKEN_HINT}"
        )
    # The row is updated already; keep the loaded object in step without a second UPDATE.
    set_committed_value(token, "used_at", now)
    set_committed_value(token, "used_by", device_id)
