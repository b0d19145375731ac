"""Rich consoles for human output, created on first use: rich costs ~0.15 s to import, and
`pgmeta extract --wait --json` (what scripts and schedulers run) never prints through it."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


@cache
def stdout_console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


@cache
def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)
