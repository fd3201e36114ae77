"""HTTPS for ``dockyard serve``: the SSLContext, certificate reloads and client certificates.

hypercorn builds its SSLContext once per worker (``Config.create_ssl_context``), so
dockyard owns it instead (``TLSConfig``): TLS 1.2 or newer, ALPN h2 and http/1.1, and a
task in each worker that looks at the certificate and key every ``tls.reload_interval``
seconds and, when they changed, loads them into the same context. New handshakes get the
new certificate; connections already open keep theirs. hypercorn asks for the context
after the app's lifespan started, so ``TLSConfig`` hands it to ``CERTIFICATES``, which a
task of the lifespan's task group (``services.py``) runs.

hypercorn 0.18 does not pass the client certificate to the app (no ASGI ``tls``
extension). With client certificates on, each worker replaces the connection class
hypercorn's worker uses (``hypercorn.trio.run.TCPServer`` or ``hypercorn.asyncio.run``'s,
a private name) by a subclass that adds ``scope["extensions"]["tls"]`` (the ASGI TLS
extension's fields, plus the verified subject) to every request of the connection; on
trio it finishes the handshake first, on asyncio the server did before the connection
class is made. ``check_tls_hook`` fails start-up if that name is gone.

Reads on trio: hypercorn's trio worker reads a TLS connection through trio's
``SSLStream``, whose ``receive_some`` returns one TLS record (at most 16 KiB) per call,
however much is asked for and already received: an upload then reached hypercorn, h11 or
h2 and the app in 16 KiB pieces (16 CPU-s per GiB, against 4.5 on uvloop, whose reads
return all that is there). So on trio each TLS connection's stream is wrapped
(``WholeReads``): after trio's ``receive_some`` it goes on decrypting the records already
received, without waiting, up to the size asked for (``server.read_size``).
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable
from typing import Any

import anyio

from dockyard.config import Settings
from dockyard.http.request import CLIENT_SUBJECT, SHORT_NAMES
from dockyard.http.worker import (
    DEFAULT_BACKEND,
    ServerConfig,
    connection_class,
    extend_connection_class,
    is_asyncio,
)

log = logging.getLogger("dockyard.tls")

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
VERIFY_MODES = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
STARTUP_ATTEMPTS = 10
# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are all fine).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


FileState = tuple[tuple[int, int, int], ...]


def file_state(paths: tuple[str, ...]) -> FileState:
    states = []
    for path in paths:
        st = os.stat(path)
        states.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(states)


def load_cert_chain_safely(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load ``cert`` and ``key`` into a live context, or raise and leave it as it was.

    A half-replaced pair (new certificate, old key) must not reach the live context:
    OpenSSL may already have swapped the certificate when the key is refused. So the pair
    is copied once (both files read at the same moment), tried on a scratch context, and
    only then loaded from the same copies.
    """
    with tempfile.TemporaryDirectory(prefix="dockyard-tls-") as scratch:
        cert_copy = shutil.copyfile(cert, os.path.join(scratch, "cert.pem"))
        key_copy = shutil.copyfile(key, os.path.join(scratch, "key.pem"))
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_copy, key_copy)
        context.load_cert_chain(cert_copy, key_copy)


def reload_if_changed(context: ssl.SSLContext, cert: str, key: str, seen: FileState) -> FileState:
    """Load cert and key into ``context`` if either file changed from ``seen`` (their
    state from before the context last loaded them); the state now loaded."""
    try:
        state = file_state((cert, key))
        if state == seen:
            return seen
        load_cert_chain_safely(context, cert, key)
    except (OSError, ssl.SSLError) as e:
        # Mid-replacement (key not yet written) or broken: keep serving the old one.
        log.warning("TLS certificate not reloaded (will retry): %s", e)
        return seen
    log.info("TLS certificate reloaded from %s", cert)
    return state


class CertificateWatch:
    """The server contexts of this worker whose certificate files are watched.

    ``TLSConfig`` adds its context when hypercorn asks for it; ``run``, a task of the
    app's lifespan (``services.py``), looks at the files every ``interval`` seconds. It
    runs in the worker's event loop thread, the one doing every handshake on the
    context, so a reload never races a handshake.
    """

    def __init__(self) -> None:
        self._watched: list[tuple[ssl.SSLContext, str, str, FileState]] = []

    def add(self, context: ssl.SSLContext, cert: str, key: str, seen: FileState) -> None:
        self._watched.append((context, cert, key, seen))

    async def run(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            for i, (context, cert, key, seen) in enumerate(self._watched):
                self._watched[i] = (context, cert, key, reload_if_changed(context, cert, key, seen))


# One per worker process (hypercorn makes one context per worker).
CERTIFICATES = CertificateWatch()


def server_context(settings: Settings) -> ssl.SSLContext:
    tls = settings.tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION  # RFC 7540 9.2.1 (and CRIME)
    context.set_ciphers(CIPHERS)
    context.set_alpn_protocols(["h2", "http/1.1"])
    load_cert_chain_safely(context, tls.cert, tls.key)
    if tls.client_auth in VERIFY_MODES:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = VERIFY_MODES[tls.client_auth]
    return context


def tls_extension(stream: Any) -> dict[str, Any]:
    """The ASGI tls extension of a connection whose handshake is done."""
    der = stream.getpeercert(binary_form=True)
    subject = stream.getpeercert().get("subject", ()) if der else ()
    pairs = [[name, value] for rdn in subject for name, value in rdn]
    version = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}.get(stream.version() or "")
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": ",".join(f"{SHORT_NAMES.get(n, n)}={v}" for n, v in reversed(pairs))
        or None,
        "client_cert_error": None,
        "tls_version": version,
        "cipher_suite": None,
        CLIENT_SUBJECT: pairs,
    }


def check_tls_hook(backend: str = DEFAULT_BACKEND) -> None:
    """Fail fast if hypercorn no longer has the connection class client certificates need."""
    from importlib.metadata import version

    # The trio worker's connection has the TLS stream; the asyncio one a stream writer.
    needed = "writer" if is_asyncio(backend) else "stream"
    try:
        cls = connection_class(backend)
        params = list(inspect.signature(cls.__init__).parameters)
        ok = inspect.iscoroutinefunction(cls.run) and "app" in params and needed in params
    except (ImportError, AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise RuntimeError(
            f"hypercorn {version('hypercorn')} has no {backend} worker TCPServer(app, ...,"
            f" {needed}) with async run(), which client certificates (tls.client_auth) rely"
            " on; install the hypercorn version in constraints.txt or update dockyard.tls"
        )


def install_client_certificate_hook(backend: str = DEFAULT_BACKEND) -> None:
    """Make this worker's connections put the client certificate into each request scope."""
    check_tls_hook(backend)
    extend_connection_class(
        backend,
        "dockyard_tls_hook",
        _asyncio_client_certificates if is_asyncio(backend) else _trio_client_certificates,
    )


def _asyncio_client_certificates(base: type[Any]) -> type[Any]:
    class AsyncioClientCertificateTCPServer(base):  # type: ignore[misc]
        async def run(self) -> None:
            # asyncio's server did the handshake (within ssl_handshake_timeout).
            ssl_object = self.writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                app: Any = getattr(self, "app")  # noqa: B009 - typed by hypercorn only
                self.app = _with_tls_scope(app, tls_extension(ssl_object))
            await super().run()

    return AsyncioClientCertificateTCPServer


def _trio_client_certificates(base: type[Any]) -> type[Any]:
    import trio  # the trio worker's connection: a trio.SSLStream to finish first

    class ClientCertificateTCPServer(base):  # type: ignore[misc]
        async def run(self) -> None:
            if isinstance(self.stream, trio.SSLStream | WholeReads):
                try:
                    with anyio.fail_after(self.config.ssl_handshake_timeout):
                        await self.stream.do_handshake()
                except (trio.BrokenResourceError, TimeoutError):
                    await self.stream.aclose()
                    return
                # hypercorn's run() does the (now finished) handshake again: a no-op.
                app: Any = getattr(self, "app")  # noqa: B009 - typed by hypercorn only
                self.app = _with_tls_scope(app, tls_extension(self.stream))
            await super().run()

    return ClientCertificateTCPServer


class WholeReads:
    """A trio ``SSLStream`` whose ``receive_some(n)`` returns all the plaintext it can
    without waiting, up to ``n`` bytes, instead of one record; everything else is the
    stream's own (``__getattr__``), as hypercorn's connection uses it.

    The extra records are read from the stream's ``ssl.SSLObject`` (trio's
    ``_ssl_object``, a private name: ``wrap`` leaves a stream without it as it is) right
    after trio's ``receive_some`` returned, in the same task and before anything else
    runs, as trio itself calls it; an error (other than "needs more data") is left for
    trio's next ``receive_some`` to meet and raise. trio fills its buffer of received
    records by 64 KiB reads of the socket (``receive_some()`` without a size), so its
    ``transport_stream`` is wrapped too (``SizedReads``): a socket read then takes as
    much as the caller asked for (``server.read_size``).
    """

    def __init__(self, stream: Any, ssl_object: ssl.SSLObject) -> None:
        self.stream = stream
        self._ssl_object = ssl_object
        self._transport = stream.transport_stream = SizedReads(stream.transport_stream)

    @classmethod
    def wrap(cls, stream: Any) -> Any:
        ssl_object = getattr(stream, "_ssl_object", None)
        if not isinstance(ssl_object, ssl.SSLObject):
            return stream  # another trio: its own reads, slower but right
        return cls(stream, ssl_object)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes:
            self._transport.size = max_bytes
        first: bytes | bytearray = await self.stream.receive_some(max_bytes)
        room = (max_bytes or 0) - len(first)
        if not first or room <= 0:
            return first
        parts = [first]
        while room > 0:
            try:
                more = self._ssl_object.read(room)
            except ssl.SSLError:  # SSLWantReadError: the next record is not all here
                break
            if not more:
                break
            parts.append(more)
            room -= len(more)
        return b"".join(parts) if len(parts) > 1 else first


class SizedReads:
    """A TLS stream's transport (trio's ``SocketStream``) whose ``receive_some()`` without
    a size reads up to ``size`` bytes, not trio's default 64 KiB."""

    def __init__(self, stream: Any, size: int = 1 << 16) -> None:
        self.stream = stream
        self.size = size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data: bytes | bytearray = await self.stream.receive_some(max_bytes or self.size)
        return data


def install_whole_reads_hook(backend: str = DEFAULT_BACKEND) -> None:
    """Make this worker's TLS connections read in ``WholeReads`` (trio's worker only:
    asyncio's transports hand over all that was received)."""
    if is_asyncio(backend):
        return

    def whole_reads(base: type[Any]) -> type[Any]:
        class WholeReadsTCPServer(base):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                stream = getattr(self, "stream", None)  # hypercorn's name: wrapped if there
                if stream is not None:
                    self.stream = WholeReads.wrap(stream)

        return WholeReadsTCPServer

    extend_connection_class(backend, "dockyard_whole_reads", whole_reads)


def _with_tls_scope(app: Any, extension: dict[str, Any]) -> Callable[..., Any]:
    async def call(scope: dict[str, Any], *args: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = extension
        await app(scope, *args)

    return call


class TLSConfig(ServerConfig):
    """``ServerConfig`` with dockyard's SSLContext (pickled into every worker)."""

    dockyard_settings: Settings

    def create_ssl_context(self) -> ssl.SSLContext | None:
        settings = self.dockyard_settings
        tls = settings.tls
        if not tls.cert:
            return None
        # The files' state is taken before they are read: a replacement that lands
        # between the two is then seen as a change, and loaded.
        for attempt in range(STARTUP_ATTEMPTS):
            seen = file_state((tls.cert, tls.key))
            try:
                context = server_context(settings)
                break
            except (OSError, ssl.SSLError):
                if attempt == STARTUP_ATTEMPTS - 1:
                    raise
                time.sleep(0.1)  # caught half-way through a replacement: try again
        if settings.tls.client_auth != "none":
            install_client_certificate_hook(settings.server.backend)
        install_whole_reads_hook(settings.server.backend)
        if settings.tls.reload_interval > 0:
            # Called inside the worker's event loop, after the lifespan started the task
            # that watches what is added here (services.py).
            CERTIFICATES.add(context, settings.tls.cert, settings.tls.key, seen)
        return context
