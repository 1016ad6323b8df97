"""API authentication: knox tokens (hashed, expiring, revocable), sent as ``Bearer`` or ``Token``."""

from __future__ import annotations

import datetime as dt
import threading
import time

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from knox.auth import TokenAuthentication
from rest_framework.authentication import get_authorization_header
from rest_framework.request import Request

from registry.events import Actor, event_record
from registry.models import ApiToken, EventKind

PREFIXES = (b"bearer", b"token")


class _TokenCache:
    """Tokens recently authenticated by this process, for ``MODELGATE_TOKEN_CACHE_SECONDS``.

    Looking a token up costs a query and a SHA-512 per request; CI and serving clients send the same
    token many times a second. An entry is keyed by the full token (so it is only found by whoever
    holds the token), keeps the token's own expiry, and is dropped at once when this process revokes
    the token. Another process may accept a revoked token for at most the cache's lifetime.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[bytes, tuple[float, tuple]] = {}

    def get(self, key: bytes) -> tuple | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        _, token = item[1]
        if token.expiry is not None and token.expiry < timezone.now():
            return None
        return item[1]

    def put(self, key: bytes, value: tuple) -> None:
        seconds = settings.MODELGATE_TOKEN_CACHE_SECONDS
        if seconds <= 0:
            return
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (time.monotonic() + seconds, value)

    def forget(self, token_key: str) -> None:
        with self._lock:
            for key in [k for k, (_, (_, t)) in self._items.items() if t.token_key == token_key]:
                del self._items[key]


token_cache = _TokenCache()


class BearerOrTokenAuthentication(TokenAuthentication):
    def authenticate(self, request: Request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in PREFIXES:
            return None
        if len(parts) != 2:
            from rest_framework.exceptions import AuthenticationFailed

            raise AuthenticationFailed("Invalid Authorization header: expected 'Bearer <token>'.")
        cached = token_cache.get(parts[1])
        if cached is not None:
            return cached
        result = self.authenticate_credentials(parts[1])
        token_cache.put(parts[1], result)
        return result

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"

    def _cleanup_token(self, auth_token: ApiToken) -> bool:
        # knox also sweeps every other token of the user on each request; that costs a query per call,
        # so only this token's expiry is checked here (expired tokens are refused, and kept for audit).
        return auth_token.expiry is not None and auth_token.expiry < timezone.now()


@transaction.atomic
def token_issue(
    *, user: AbstractBaseUser, name: str = "", days: int | None = None, actor: Actor = None
) -> tuple[ApiToken, str]:
    """Issue a token; the plaintext is returned once and never stored."""
    expiry = dt.timedelta(days=days) if days else None
    if days is None:
        from knox.settings import knox_settings

        expiry = knox_settings.TOKEN_TTL
    token, plaintext = ApiToken.objects.create(user=user, expiry=expiry, name=name)
    event_record(
        kind=EventKind.TOKEN_ISSUED,
        actor=actor or user,
        data={
            "user": user.get_username(),
            "name": name,
            "token_key": token.token_key,
            "expiry": str(token.expiry),
        },
    )
    return token, plaintext


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: Actor) -> None:
    event_record(
        kind=EventKind.TOKEN_REVOKED,
        actor=actor,
        data={"user": token.user.get_username(), "name": token.name, "token_key": token.token_key},
    )
    token.delete()
    token_cache.forget(token.token_key)
