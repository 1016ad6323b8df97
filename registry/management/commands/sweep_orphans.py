"""python manage.py sweep_orphans [--dry-run]: delete the stored blobs no version, export or dataset
names, once older than MODELGATE_ORPHAN_GRACE_HOURS (beat runs the same sweep daily)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from lifecycle.orphans import orphans_sweep


class Command(BaseCommand):
    help = "Delete orphan blobs from the artifact store (bytes no record refers to)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list them, delete nothing")

    def handle(self, *args, dry_run: bool = False, **options) -> None:
        sweep = orphans_sweep(dry_run=dry_run)
        for key in sweep.orphans:
            self.stdout.write(f"{'would delete' if dry_run else 'deleted'} {key}")
        self.stdout.write(
            f"scanned {sweep.scanned} blob(s): {len(sweep.orphans)} orphan(s) "
            f"{'found' if dry_run else 'deleted'}, {sweep.young_kept} younger than the grace period kept"
        )
