"""The cyclic garbage collector, paused while a bulk step runs.

A close step or a usage load allocates hundreds of thousands of dicts and tuples (slots,
charges, lines, COPY rows) that mostly live until the step ends. Each allocation burst
sets off the cyclic collector, which walks every live container again to find next to no
garbage: a fifth of the rating step's CPU, measured. Reference counting still frees
everything that is not part of a cycle as soon as it is dropped; the few cycles made
meanwhile wait until the collector runs again after the step.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (nested and concurrent blocks allowed: the
    collector comes back, as it was, when the last one ends)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
