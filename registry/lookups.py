"""``id__any=[...]``: membership in a long list of ids as ONE bound parameter.

``id__in`` writes one placeholder per id; with 100,000 ids building the statement costs seconds and
SQLite refuses it (too many variables). ``__any`` sends the list as one value: a PostgreSQL array
(``= ANY(%s)``), or a JSON text that SQLite unpacks with ``json_each``.
"""

from __future__ import annotations

import json

from django.db.models import BigAutoField, BigIntegerField, ForeignKey, IntegerField, Lookup


class AnyOf(Lookup):
    lookup_name = "any"
    prepare_rhs = False

    def get_db_prep_lookup(self, value, connection):
        ids = [int(v) for v in value]
        if connection.vendor == "postgresql":
            return "%s", [ids]
        return "%s", [json.dumps(ids)]

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY({rhs}::bigint[])", [*lhs_params, *rhs_params]
        return f"{lhs} IN (SELECT value FROM json_each({rhs}))", [*lhs_params, *rhs_params]


for field in (IntegerField, BigIntegerField, BigAutoField, ForeignKey):
    field.register_lookup(AnyOf)
