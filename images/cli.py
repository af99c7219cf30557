"""Commands of this area, registered on the `ft` app by jobs.cli."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
