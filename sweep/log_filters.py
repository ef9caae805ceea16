"""Console lines a sweep's user does not need, dropped from the loggers that write them while a
step runs (local Ray's start, Tune's fit); what those loggers write to files is untouched."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator


@contextlib.contextmanager
def filtered(logger_names: Iterable[str],
             keep: Callable[[logging.LogRecord], bool]) -> Iterator[None]:
    """Within: the loggers named drop every record ``keep`` refuses."""
    loggers = [logging.getLogger(name) for name in logger_names]
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(keep)
