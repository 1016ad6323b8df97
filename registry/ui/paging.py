"""A paginator for searches over the whole catalog: it counts at most ``cap`` rows.

Counting every match of a broad search over 100,000 versions costs more than fetching the page
(bench/catalog_scale.py); past the cap the page says "10,000+" and asks for a narrower search.
"""

from __future__ import annotations

from functools import cached_property

from django.core.paginator import Paginator


class CappedPaginator(Paginator):
    cap = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap
