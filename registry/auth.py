"""API authentication: knox tokens (hashed, expiring, revocable), sent as ``Bearer`` or ``Token``."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from knox.auth import TokenAuthentication
from rest_framework.authentication import get_authorization_header
from rest_framework.request import Request

from registry.events import Actor, event_record
from registry.models import ApiToken, EventKind

PREFIXES = (b"bearer", b"token")


class BearerOrTokenAuthentication(TokenAuthentication):
    def authenticate(self, request: Request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in PREFIXES:
            return None
        if len(parts) != 2:
            from rest_framework.exceptions import AuthenticationFailed

            raise AuthenticationFailed("Invalid Authorization header: expected 'Bearer <token>'.")
        return self.authenticate_credentials(parts[1])

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
