"""A TCP relay on loopback that a test can cut: one instance's network path to a shared
server (PostgreSQL, an object store) made unreachable while the other instances keep
theirs, as a network partition would.

Point one client at ``relay.port`` instead of the server's port. ``cut()`` closes every
relayed connection and, until ``heal()``, closes new ones as soon as they are accepted
(the client sees its connection reset or closed, as with a server it cannot reach).
Threads, one pair per connection: the relayed clients are a few database pools.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

BUFFER = 64 * 1024


class TcpRelay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            with self._lock:
                refuse = self._cut or self._stopped
            if refuse:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(BUFFER):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # One side ended: end both, as a TCP proxy does.
            for s in (source, sink):
                with self._lock:
                    self._open.discard(s)
                _close(s)

    def cut(self) -> None:
        """Close every relayed connection and refuse new ones until ``heal``."""
        with self._lock:
            self._cut = True
            sockets, self._open = list(self._open), set()
        for s in sockets:
            _close(s)

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self.cut()
        _close(self._listener)
        self._thread.join(5)

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
