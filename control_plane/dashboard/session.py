"""Signed session cookies and CSRF tokens for the dashboard; no session table.

An operator signs in with an operator token. The cookie then holds the token's id, an expiry
and a random nonce, authenticated with HMAC-SHA256 under the dashboard's key and the token's
stored hash:

    edgefleet_session = v1.<token id>.<expires, unix s>.<nonce>.<mac>
    mac = HMAC(key, "v1.<id>.<expires>.<nonce>|<token hash>")

so a cookie is useless without the key (kept in the data directory, readable by the control
plane only), ends when the token is revoked (every request loads the token), and cannot be
moved onto another token. The cookie is HttpOnly, SameSite=Strict, and Secure when the control
plane is reached over HTTPS.

CSRF: every form carries `csrf_token = HMAC(key, "csrf|" + nonce)` of its session (JavaScript
sends it as `X-CSRF-Token`), checked on every request that is not a GET. The sign-in form, which
has no session yet, is tied the same way to a random nonce in a short-lived login cookie.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from control_plane.db.models import OperatorToken

SESSION_COOKIE = "edgefleet_session"
LOGIN_COOKIE = "edgefleet_login"
FLASH_COOKIE = "edgefleet_flash"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME_S = 12 * 3600
LOGIN_LIFETIME_S = 3600
FLASH_LIFETIME_S = 60
KEY_FILE = "dashboard-session.key"
KEY_BYTES = 32
_VERSION = "v1"
_MAX_COOKIE_CHARS = 512


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a well-formed, unexpired session cookie says; not yet checked against its token."""

    token_id: int
    expires: int
    nonce: str
    mac: str


class SessionSigner:
    """Issues and checks session cookies, CSRF tokens and signed short values with one key."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"the dashboard session key must have at least {KEY_BYTES} bytes")
        self._key = key
        self._clock = clock

    def _mac(self, message: str) -> str:
        return _b64(hmac.new(self._key, message.encode(), hashlib.sha256).digest())

    def issue(self, token: OperatorToken) -> str:
        """A new session cookie value for `token`."""
        expires = int(self._clock()) + SESSION_LIFETIME_S
        body = f"{_VERSION}.{token.id}.{expires}.{_b64(secrets.token_bytes(16))}"
        return f"{body}.{self._mac(f'{body}|{token.token_hash}')}"

    def read(self, value: str | None) -> SessionClaims | None:
        """The claims of a well-formed, unexpired cookie value; None for anything else."""
        if not value or len(value) > _MAX_COOKIE_CHARS:
            return None
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != _VERSION:
            return None
        _, raw_id, raw_expires, nonce, mac = parts
        if not (raw_id.isdigit() and raw_expires.isdigit()) or int(raw_expires) < self._clock():
            return None
        return SessionClaims(int(raw_id), int(raw_expires), nonce, mac)

    def belongs_to(self, claims: SessionClaims, token: OperatorToken) -> bool:
        """Whether the cookie was issued by this key for this very token."""
        body = f"{_VERSION}.{claims.token_id}.{claims.expires}.{claims.nonce}"
        expected = self._mac(f"{body}|{token.token_hash}")
        return hmac.compare_digest(expected, claims.mac)

    def csrf_token(self, nonce: str) -> str:
        """The CSRF token of the session (or login form) with this nonce."""
        return self._mac(f"csrf|{nonce}")

    def csrf_ok(self, nonce: str, presented: str | None) -> bool:
        """Whether `presented` is the CSRF token of `nonce` (compared in constant time)."""
        return presented is not None and hmac.compare_digest(self.csrf_token(nonce), presented)

    def login_nonce(self) -> str:
        """A fresh nonce for the login cookie."""
        return _b64(secrets.token_bytes(16))

    def seal(self, text: str) -> str:
        """`text` with a MAC, for a cookie the server reads back (a flash message)."""
        data = _b64(text.encode())
        return f"{data}.{self._mac(f'seal|{data}')}"

    def unseal(self, value: str | None) -> str | None:
        """The text `seal` wrapped, or None when the value is missing or was altered."""
        if not value or len(value) > _MAX_COOKIE_CHARS * 2:
            return None
        data, _, mac = value.partition(".")
        if not hmac.compare_digest(self._mac(f"seal|{data}"), mac):
            return None
        try:
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None


def load_or_create_key(directory: Path) -> bytes:
    """The key in `directory/dashboard-session.key`, created (mode 0600) on first use.

    Replicas sharing the data directory share the key, so a session works on any of them; the
    file is linked into place, so two replicas starting at once end up with the same key.
    Blocking: call it from a thread.
    """
    path = directory / KEY_FILE
    directory.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        temporary = directory / f".{KEY_FILE}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another replica's key wins
                os.link(temporary, path)  # unlike a rename, never replaces an existing key
        finally:
            temporary.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} is too short; delete it to have a new key made")
    return key


def set_cookie(
    response: web.StreamResponse, name: str, value: str, max_age: int, secure: bool
) -> None:
    """Set a cookie the way every dashboard cookie is set: HttpOnly, SameSite=Strict, path /."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def clear_cookie(response: web.StreamResponse, name: str, secure: bool) -> None:
    """Expire a dashboard cookie (with the same attributes it was set with)."""
    set_cookie(response, name, "", 0, secure)
