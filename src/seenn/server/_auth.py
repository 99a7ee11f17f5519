"""Who may call ``seenn serve``: API keys, user read tokens, and per-key rate limits.

Keys are looked up by their SHA-256 hash (``Store.apps``), read again at most once a
second when one is unknown (another process may have registered it). A user token
is ``ut_<base64url claims>.<base64url HMAC-SHA256>``, signed with the app's random
key kept in the database and stored nowhere; ``authenticate`` checks it in constant
time and never echoes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from seenn._core.validation import (
    MAX_TTL_SECONDS,
    MAX_USER_ID,
    MIN_TTL_SECONDS,
    check_int,
    check_text,
    format_datetime,
)
from seenn.server._errors import HTTPError, Response
from seenn.server._jobs import Fields
from seenn.server._store import Store, key_hash

TOKEN_PREFIX = "ut_"
DEFAULT_TOKEN_TTL = 3600
# A token is about 100 characters and its user id; far longer is not one of ours.
_MAX_TOKEN_CHARS = 2048
# Binds a signature to its use, should the signing key ever sign anything else.
_TOKEN_CONTEXT = b"seenn-user-token-v1."
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def new_key(kind: str) -> str:
    """Make a random test key of a kind (``sk`` or ``pk``)."""
    return f"{kind}_test_{base64.b32encode(os.urandom(20)).decode().lower().rstrip('=')}"


class RateLimiter:
    """Fixed one-second windows per key: simple, and the headers are exact."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> tuple[bool, int, float]:
        window = int(now)
        with self._lock:
            start, count = self._windows.get(key, (window, 0))
            if start != window:
                start, count = window, 0
            if count >= self.limit:
                return False, 0, max(0.001, window + 1 - now)
            self._windows[key] = (start, count + 1)
            if len(self._windows) > 10_000:
                self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
            return True, self.limit - count - 1, 0.0

    def headers(self, key: str, now: float) -> dict[str, str]:
        """Count a request of ``key``: its rate-limit headers.

        Raises:
            HTTPError: 429 with ``Retry-After`` past the limit.
        """
        allowed, remaining, retry_after = self.hit(key, now)
        headers = {"X-RateLimit-Limit": str(self.limit),
                   "X-RateLimit-Remaining": str(remaining)}
        if not allowed:
            headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
            raise HTTPError(429, "RATE_LIMITED",
                            f"more than {self.limit} requests per second", headers=headers)
        return headers


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the app, the kind of credential, and for a token its user."""

    app_id: str
    kind: str  # "secret", "public" or "token"
    rate_key: str
    user_id: str | None = None


class Keys:
    """The apps' keys and token signing keys of one store, read again when one is unknown."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys = store.apps()
        self._signing_keys = store.signing_keys()
        self._keys_loaded = time.monotonic()

    def authenticate(self, environ: Mapping[str, Any]) -> Caller:
        """Who sent a request, by its ``Authorization: Bearer`` key or user token.

        Raises:
            HTTPError: 401 for no key, an unknown key, or a bad or expired token.
        """
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise HTTPError(401, "UNAUTHORIZED", "missing API key: send Authorization: Bearer")
        if key.startswith(TOKEN_PREFIX):
            return self._read_token(key)
        digest = key_hash(key)
        found = self._keys.get(digest)
        if found is None and self._reload_keys():
            found = self._keys.get(digest)
        if found is None:
            raise HTTPError(401, "UNAUTHORIZED", "unknown API key")
        return Caller(found[0], found[1], digest)

    def _reload_keys(self) -> bool:
        """Read the apps again, at most once a second; whether it did."""
        if time.monotonic() - self._keys_loaded <= 1.0:
            return False
        # Another process sharing the database may have registered the key.
        self._keys, self._signing_keys = self._store.apps(), self._store.signing_keys()
        self._keys_loaded = time.monotonic()
        return True

    def _signing_key(self, app_id: str) -> bytes | None:
        key = self._signing_keys.get(app_id)
        if key is None and self._reload_keys():
            key = self._signing_keys.get(app_id)
        return key

    def _read_token(self, token: str) -> Caller:
        """Check a user token's signature and expiry; the token itself is never echoed."""
        invalid = HTTPError(401, "UNAUTHORIZED", "invalid user token")
        if len(token) > _MAX_TOKEN_CHARS:
            raise invalid
        payload, _, signature = token[len(TOKEN_PREFIX):].partition(".")
        try:
            claims = json.loads(_unbase64(payload))
            given = _unbase64(signature)
        except (ValueError, RecursionError):
            raise invalid from None
        # Only the app id is read before the signature is checked: it picks the key.
        app_id = claims.get("app") if isinstance(claims, dict) else None
        if not isinstance(app_id, str):
            raise invalid
        key = self._signing_key(app_id)
        if key is None:
            raise invalid
        expected = hmac.new(key, _TOKEN_CONTEXT + payload.encode("ascii"),
                            hashlib.sha256).digest()
        if not hmac.compare_digest(expected, given):
            raise invalid
        user_id, expires = claims.get("user"), claims.get("exp")
        if not isinstance(user_id, str) or type(expires) is not int:
            raise invalid
        if expires <= self._store.clock():
            raise HTTPError(401, "TOKEN_EXPIRED",
                            "the user token has expired: get a new one from your backend")
        # One rate window per user, however many tokens the user was given.
        return Caller(app_id, "token", key_hash(f"{TOKEN_PREFIX}{app_id}:{user_id}"), user_id)

    def mint_token(self, app_id: str, body: Mapping[str, Any]) -> Response:
        """``POST /v1/tokens``: a user token, signed and stored nowhere."""
        fields = Fields()
        user_id = fields.check("userId", lambda: check_text(
            "userId", body.get("userId"), max_len=MAX_USER_ID))
        ttl = fields.check("ttlSeconds", lambda: DEFAULT_TOKEN_TTL
                           if body.get("ttlSeconds") is None else check_int(
                               "ttlSeconds", body.get("ttlSeconds"), minimum=MIN_TTL_SECONDS,
                               maximum=MAX_TTL_SECONDS))
        fields.raise_if_any()
        key = self._signing_key(app_id)
        if key is None:
            raise HTTPError(500, "INTERNAL", "the app has no signing key")
        expires = int(self._store.clock()) + ttl
        claims = {"app": app_id, "user": user_id, "exp": expires}
        payload = _base64(json.dumps(claims, separators=(",", ":"),
                                     ensure_ascii=False).encode("utf-8"))
        signature = hmac.new(key, _TOKEN_CONTEXT + payload.encode("ascii"),
                             hashlib.sha256).digest()
        token = f"{TOKEN_PREFIX}{payload}.{_base64(signature)}"
        expires_at = format_datetime(datetime.fromtimestamp(expires, tz=timezone.utc))
        return 201, {"token": token, "expiresAt": expires_at}, {"Cache-Control": "no-store"}


def _base64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unbase64(text: str) -> bytes:
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
