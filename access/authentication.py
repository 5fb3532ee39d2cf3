"""DRF authentication by Corral API key: ``Authorization: Bearer <key>``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions

from access.keys import KeyRejected, api_key_authenticate
from access.models import ApiKey


class ApiKeyUser(AnonymousUser):
    """The request.user of a key-authenticated call: authenticated, but no Django user and never staff."""

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True

    @property
    def is_anonymous(self) -> bool:  # type: ignore[override]
        return False


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[ApiKeyUser, ApiKey] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <API key>'.")
        try:
            presented = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid API key.") from exc
        try:
            api_key = api_key_authenticate(presented)
        except KeyRejected as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from exc
        return ApiKeyUser(), api_key

    def authenticate_header(self, request: Any) -> str:
        return f'{self.keyword} realm="corral"'
