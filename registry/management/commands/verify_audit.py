"""python manage.py verify_audit [--seal]: recompute the audit log's hash chain and report any edited,
deleted or re-chained event (exit status 1). Prints the head of the chain: keep it somewhere the
database's writers cannot reach, and compare next time."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from registry.audit import audit_seal, audit_verify


class Command(BaseCommand):
    help = "Verify the audit log's hash chain (exit 1 when an event was edited or deleted)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--seal", action="store_true", help="seal the events not yet chained first")

    def handle(self, *args, seal: bool = False, **options) -> None:
        if seal:
            self.stdout.write(f"sealed {audit_seal()} event(s)")
        result = audit_verify()
        self.stdout.write(
            f"checked {result.checked} event(s); head seq {result.head_seq} hash {result.head_hash}; "
            f"{result.unsealed} not sealed yet"
        )
        if not result.intact:
            for problem in result.problems:
                self.stderr.write(problem)
            raise CommandError(f"the audit log was tampered with: {len(result.problems)} problem(s)")
        self.stdout.write("the audit log is intact")
