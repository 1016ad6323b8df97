"""python manage.py dataset_stats [--all]: compute the summary statistics of datasets registered before
Modelgate kept them (the audit report shows them per feature). Run once after upgrading."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from registry.models import Dataset
from registry.services import dataset_stats_fill


class Command(BaseCommand):
    help = "Compute the per-feature summary statistics of datasets that have none (or, with --all, of every dataset)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--all", action="store_true", dest="every", help="recompute every dataset")

    def handle(self, *args, every: bool = False, **options) -> None:
        chosen = Dataset.objects.order_by("id").iterator() if every else None
        filled, problems = dataset_stats_fill(datasets_to_fill=chosen)
        for problem in problems:
            self.stderr.write(problem)
        self.stdout.write(f"{filled} dataset(s) profiled, {len(problems)} skipped")
