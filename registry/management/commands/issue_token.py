"""``manage.py issue_token USER``: print a new API token alone on the last line, for scripts to capture."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from registry.auth import token_issue


class Command(BaseCommand):
    help = "Issue an API token for USER (stored hashed; shown once). The token is the last line printed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for, e.g. 'github-actions'")
        parser.add_argument(
            "--days", type=int, default=None, help="days until it expires (default: TOKEN_TTL_DAYS)"
        )
        parser.add_argument("--create", action="store_true", help="create the user when it does not exist")
        parser.add_argument("--staff", action="store_true", help="with --create: make the user an admin")

    def handle(
        self,
        *args: object,
        username: str,
        name: str,
        days: int | None,
        create: bool,
        staff: bool,
        **options: object,
    ) -> None:
        users = get_user_model().objects
        user = users.filter(username=username).first()
        if user is None:
            if not create:
                raise CommandError(f"no user named {username!r} (use --create to make one)")
            user = users.create_user(username=username, is_staff=staff, is_superuser=staff)
            self.stdout.write(f"created user {username}{' (admin)' if staff else ''}")
        token, plaintext = token_issue(user=user, name=name, days=days, actor="system:issue_token")
        expiry = f"expires {token.expiry:%Y-%m-%d}" if token.expiry else "never expires"
        self.stdout.write(f"token for {username} ({name or 'unnamed'}), {expiry}:")
        self.stdout.write(plaintext)
