"""Which hypercorn worker serves dockyard (``[server] backend``), and its modules.

``trio`` is hypercorn's trio worker; ``asyncio`` and ``uvloop`` are its asyncio worker,
on the standard event loop or on uvloop's. The application code is the same on all three
(anyio); what differs is hypercorn's own connection code, which dockyard's hooks
(``services.set_read_size``, ``http/h2edge.py``, ``http/websocket.py``, ``tls.py``)
change: each hooks the modules of the worker named here.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from email.utils import formatdate
from types import ModuleType
from typing import Any

from hypercorn.config import Config

from dockyard.config.model import SERVER_BACKENDS as BACKENDS

DEFAULT_BACKEND = "trio"


def is_asyncio(backend: str) -> bool:
    """Whether ``backend`` runs on hypercorn's asyncio worker (uvloop included)."""
    return backend in ("asyncio", "uvloop")


def run_module(backend: str) -> ModuleType:
    """``hypercorn.trio.run`` or ``hypercorn.asyncio.run``: where the worker looks up its
    connection class (``TCPServer``, a private name) for each connection."""
    return importlib.import_module(f"hypercorn.{_package(backend)}.run")


def connection_class(backend: str) -> type[Any]:
    """The class the worker makes each connection with (``run_module``'s ``TCPServer``),
    as the hooks installed so far have extended it."""
    cls: type[Any] = getattr(run_module(backend), "TCPServer")  # noqa: B009 - private name
    return cls


def extend_connection_class(
    backend: str, marker: str, extend: Callable[[type[Any]], type[Any]]
) -> None:
    """Make the worker's connections with ``extend(connection_class(backend))``, a
    subclass, once per process: nothing is done when a class already carries ``marker``
    (the hooks run again in every worker and test)."""
    base = connection_class(backend)
    if getattr(base, marker, False):
        return
    extended = extend(base)
    setattr(extended, marker, True)
    setattr(run_module(backend), "TCPServer", extended)  # noqa: B010 - private name


def tcp_server_module(backend: str) -> ModuleType:
    """``hypercorn.trio.tcp_server`` or ``hypercorn.asyncio.tcp_server`` (``MAX_RECV``)."""
    return importlib.import_module(f"hypercorn.{_package(backend)}.tcp_server")


def worker_context_module(backend: str) -> ModuleType:
    return importlib.import_module(f"hypercorn.{_package(backend)}.worker_context")


class ServerConfig(Config):
    """hypercorn's Config as ``dockyard serve`` uses it (pickled into every worker).

    Every response's Date header is formatted once per second rather than per response
    (hypercorn formats it anew each time: about 2% of a manifest HEAD on uvloop), and no
    Server header is sent (it named hypercorn's version to every client)."""

    include_server_header = False
    _date_second = -1
    _date_header: tuple[tuple[bytes, bytes], ...] = ()

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        if not self.include_date_header or self.alt_svc_headers or self._quic_addresses:
            return super().response_headers(protocol)
        now = int(time.time())
        if now != self._date_second:
            date = formatdate(now, usegmt=True).encode("ascii")
            self._date_header, self._date_second = ((b"date", date),), now
        return list(self._date_header)


def check_available(backend: str) -> None:
    """Raise ``RuntimeError`` if ``backend`` cannot run here (uvloop not installed)."""
    if backend not in BACKENDS:
        raise RuntimeError(f"unknown server backend {backend!r} (one of {', '.join(BACKENDS)})")
    if backend == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise RuntimeError(
                'server.backend = "uvloop" needs uvloop: install dockyard[uvloop] '
                '(or choose "asyncio")'
            ) from None


def _package(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown server backend {backend!r}")
    return "asyncio" if is_asyncio(backend) else "trio"


__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "ServerConfig",
    "check_available",
    "is_asyncio",
    "run_module",
    "tcp_server_module",
    "worker_context_module",
]
