"""OpenAPI description of the token authentication (so the schema and the docs page show it)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "registry.auth.BearerOrTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from `manage.py issue_token USER` or the tokens page; "
            "`Authorization: Token <token>` is accepted too.",
        }
