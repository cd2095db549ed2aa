"""Logging in scanpy's style: a start line, then ``finished (0:00:03)`` with what was added."""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
import time
from collections.abc import Iterator

_ROOT = "biomed_toolkit"
_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class _OutputHandler(logging.StreamHandler):
    """stderr in a terminal; stdout inside a Jupyter kernel, where log lines are then normal
    cell output instead of pink stderr boxes. The stream is looked up at every line."""

    @property
    def stream(self):  # type: ignore[override]
        from .display import in_notebook

        return sys.stdout if in_notebook() else sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it: the lookup wins
        pass


def _configure_root() -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = _OutputHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.propagate = False
    return root


def set_verbosity(level: int) -> None:
    """0 errors, 1 warnings, 2 info (default), 3 debug."""
    _configure_root().setLevel(_LEVELS[max(0, min(3, int(level)))])


def get_logger(name: str) -> logging.Logger:
    """A child of the package logger, e.g. ``get_logger(__name__)``."""
    _configure_root()
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


class _Timer:
    def __init__(self) -> None:
        self.added: list[str] = []

    def add(self, what: str) -> None:
        """Name a field written, reported on the ``finished`` line."""
        self.added.append(what)


@contextlib.contextmanager
def timed(logger: logging.Logger, what: str) -> Iterator[_Timer]:
    """Log ``what`` now and ``finished (H:MM:SS)`` when the block ends.

    Examples
    --------
    >>> log = get_logger("demo")
    >>> with timed(log, "computing something") as t:
    ...     t.add("'X_demo', embedding (adata.obsm)")
    """
    start = time.perf_counter()
    logger.info(what)
    timer = _Timer()
    yield timer
    elapsed = datetime.timedelta(seconds=round(time.perf_counter() - start))
    tail = ""
    if timer.added:
        tail = ": added\n    " + "\n    ".join(timer.added)
    logger.info(f"    finished ({elapsed}){tail}")
