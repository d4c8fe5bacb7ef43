"""The dashboard's session: a sealed cookie that carries the admin key, its CSRF token and expiry.

Why this design: the dashboard keeps no state, so any admin replica can serve
any page, and the admin key stays the only credential. The cookie holds the
key's secret sealed with AES-256-GCM (confidential and tamper-evident) under a
key derived from `admin.session_secret`; every page unseals it and has auth
check the secret again with the admin role, so revoking the admin key (or
taking its role) ends its sessions at once, on every replica. Replicas must
share `admin.session_secret`; when it is unset each process draws a random one
and its sessions end when it restarts.

A session without a secret is a sign-in form's: it carries only the CSRF token
of that form, so even the sign-in POST is checked (no login CSRF). Signing in
issues a new session with a new token.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's
page sends it) and Secure whenever the dashboard is served over TLS.

A new key's secret is shown once, after a redirect (POST, redirect, GET, so a
reload never makes a second key): it crosses that redirect sealed the same
way in a cookie of its own, which lives two minutes and is deleted by the
page that shows it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

COOKIE = "meshgate_session"
# Sealed cookies are bound to this purpose: a value sealed for anything else never opens.
_AAD = b"meshgate dashboard session v1"
_NONCE_BYTES = 12
# How long a sign-in form's session lasts: long enough to type a key, no longer.
SIGNIN_TTL_S = 3600
# A new key's secret crosses one redirect (POST /keys, then GET /keys shows it once) in
# its own sealed cookie, so that reloading the page never creates a second key.
CREATED_COOKIE = "meshgate_created"
_CREATED_AAD = b"meshgate dashboard created key v1"
CREATED_TTL_S = 120


@dataclass(frozen=True, slots=True)
class Session:
    """What the cookie carries: the admin secret ("" before sign-in), the CSRF token, expiry."""

    secret: str
    csrf: str
    expires: int

    @property
    def signed_in(self) -> bool:
        return bool(self.secret)

    def csrf_matches(self, token: str) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), token.encode())


@dataclass(frozen=True, slots=True)
class Created:
    """A key just made, on its way to the one page that shows its secret."""

    key_id: str
    name: str
    secret: str


def new_session(secret: str, ttl_s: int, now: float | None = None) -> Session:
    """A session with a fresh CSRF token, `ttl_s` seconds long."""
    moment = time.time() if now is None else now
    return Session(secret=secret, csrf=secrets.token_urlsafe(32), expires=int(moment) + ttl_s)


class Sealer:
    """Seals sessions (and new keys' secrets) into cookie values and opens them again."""

    def __init__(self, session_secret: str) -> None:
        material = session_secret.encode() if session_secret else os.urandom(32)
        self._aead = AESGCM(hashlib.sha256(b"meshgate-session:" + material).digest())

    def _seal(self, fields: dict[str, Any], purpose: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, orjson.dumps(fields), purpose)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def _open(self, value: str, purpose: bytes, now: float | None) -> dict[str, Any] | None:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) <= _NONCE_BYTES:
            return None
        try:
            fields = orjson.loads(
                self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], purpose)
            )
            expires = int(fields["e"])
        except (InvalidTag, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if not isinstance(fields, dict) or expires <= (time.time() if now is None else now):
            return None
        return fields

    def seal(self, session: Session) -> str:
        return self._seal({"s": session.secret, "c": session.csrf, "e": session.expires}, _AAD)

    def open(self, value: str, now: float | None = None) -> Session | None:
        """The session in a cookie value, or None if it is forged, damaged, foreign or expired."""
        fields = self._open(value, _AAD, now)
        if fields is None:
            return None
        try:
            return Session(secret=str(fields["s"]), csrf=str(fields["c"]), expires=int(fields["e"]))
        except (KeyError, TypeError, ValueError):
            return None

    def seal_created(self, created: Created, ttl_s: int = CREATED_TTL_S) -> str:
        fields = {"i": created.key_id, "n": created.name, "s": created.secret}
        return self._seal(fields | {"e": int(time.time()) + ttl_s}, _CREATED_AAD)

    def open_created(self, value: str, now: float | None = None) -> Created | None:
        fields = self._open(value, _CREATED_AAD, now)
        if fields is None:
            return None
        try:
            return Created(key_id=str(fields["i"]), name=str(fields["n"]), secret=str(fields["s"]))
        except KeyError:
            return None


def cookie_header(value: str, max_age: int, *, secure: bool, name: str = COOKIE) -> str:
    """The Set-Cookie value of the session cookie (or another); max_age 0 deletes it."""
    parts = [f"{name}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def served_over_tls(scheme: str, public_url: str) -> bool:
    """Whether the browser reaches the dashboard over TLS: this request, or the public URL."""
    return scheme == "https" or public_url.startswith("https://")
