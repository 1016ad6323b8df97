"""python manage.py retirement [--dry-run] [--json]: what the retirement sweep does now, and why."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from lifecycle import retirement

LABELS = {"warn": "warn", "retire": "retire", "cancel": "cancel warning", "purge": "purge bytes"}


class Command(BaseCommand):
    help = "Run the retirement sweep (or, with --dry-run, list what it would warn, retire, cancel and purge)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list the decisions, change nothing")
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON document")

    def handle(self, *args, dry_run: bool = False, as_json: bool = False, **options) -> None:
        if dry_run:
            decisions = retirement.retirement_plan().decisions
        else:
            result = retirement.retirement_sweep()
            decisions = result.warned + result.cancelled + result.retired + result.purged
        self._print(decisions, dry_run=dry_run, as_json=as_json)

    def _print(self, decisions, *, dry_run: bool, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps({"dry_run": dry_run, "decisions": [d.as_dict() for d in decisions]}))
            return
        for d in sorted(decisions, key=lambda d: (d.action, d.model, d.version)):
            self.stdout.write(f"{LABELS[d.action]:<15} {d.model} v{d.version} ({d.status}): {d.reason}")
        verb = "would change" if dry_run else "changed"
        self.stdout.write(f"{len(decisions)} version(s) {verb}")
