"""Logging a failed step of a background task (event hub, pull-event writer, webhook
deliverer): a database outage is expected in a deployment and says what failed in one
line; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import logging
import sys

from dockyard.meta.records import StoreUnavailable


def log_failure(log: logging.Logger, message: str, *args: object) -> None:
    """Log the exception being handled (call it in an ``except`` block): a warning with
    the reason when the database was unavailable (it retries, and /readyz says so; a
    traceback per attempt would flood the log), else an error with the traceback."""
    error = sys.exc_info()[1]
    if isinstance(error, StoreUnavailable):
        log.warning(f"{message}: %s", *args, error)
    else:
        log.exception(message, *args)
