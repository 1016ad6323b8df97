"""`python -m modelgate_client` is the same as the `modelgate` command."""

from __future__ import annotations

from modelgate_client.cli import main

main()
