"""A command's imports with the cyclic garbage collector paused.

Importing Prefect, SQLAlchemy and the close's modules builds hundreds of thousands of
objects that live until the process ends (modules, classes, functions, their caches),
and the collector walked them again and again meanwhile: 0.3-0.5 s of the 1.4-2.0 s a
`billing close` spends importing (docs/performance.md, "fifth round"). Imports make
next to no garbage, so the collector is paused while they run, and what they built is
then frozen (`gc.freeze`: never walked again). The collector runs as usual afterwards,
through the command's own work.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block without cyclic collections, then freeze what it left and collect
    again as before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def import_quietly(*modules: str) -> None:
    """Import `modules` (by dotted name) with the collector paused."""
    with collector_paused():
        for name in modules:
            importlib.import_module(name)
