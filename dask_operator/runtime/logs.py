"""Structured logging for the runtime: structlog with c-r's keys, JSON lines by default.

Invariant: every line logged inside a reconcile carries controller, namespace, name and reconcile_id (bound
once, in a contextvar, for the duration of that reconcile and no longer); the message key is `msg`.
Held by test/integration/test_runtime_manager.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog


def _rename_event_to_msg(_: Any, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    if "event" in event:
        event["msg"] = event.pop("event")
    return event


def configure(level: str = "info", json: bool = True) -> None:
    """Configure structlog (and stdlib logging) for the operator process."""
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt=None, key="ts"),
            structlog.processors.format_exc_info,
            _rename_event_to_msg,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


@contextmanager
def reconcile_context(controller: str, namespace: str, name: str, reconcile_id: str) -> Iterator[None]:
    """Bind the per-reconcile keys for every log line emitted in this thread inside the block."""
    with structlog.contextvars.bound_contextvars(
        controller=controller, namespace=namespace, name=name, reconcile_id=reconcile_id
    ):
        yield
