"""The composition root: builds everything from settings, owns the background tasks.

Nothing is built at import time. ``build`` wires one registry process; ``create_app`` is
the entry point hypercorn workers load (``dockyard.services:create_app()``), reading the
same settings the ``dockyard serve`` parent validated (config file path in
``DOCKYARD_CONFIG``, overrides in ``DOCKYARD_*``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from dockyard.auth.assembly import TokenAccessAuthorizer, build_authorizer
from dockyard.auth.limits import LoginLimiter
from dockyard.auth.robots import RobotTokens
from dockyard.auth.tickets import FeedTickets, shared_ticket_key
from dockyard.auth.tokens import TokenAuth
from dockyard.cache import PullThroughCache
from dockyard.config import Settings, load
from dockyard.core.jobs import JobBusy
from dockyard.core.registry import Registry
from dockyard.core.retention import SCHEDULE_JOB, Policies, Retention, RetentionReport
from dockyard.core.stats import Statistics
from dockyard.events.feed import FEED_PATH
from dockyard.events.hub import EventHub
from dockyard.events.pulls import PullEventWriter
from dockyard.events.webhooks import WebhookDeliverer
from dockyard.http import edge, h2edge, keepalive, websocket
from dockyard.http.answers import AnswerCache
from dockyard.http.asgi import RegistryApp
from dockyard.http.bodyrate import BodyPace
from dockyard.http.guard import build_guard
from dockyard.http.handlers.feed import EventFeed
from dockyard.http.handlers.token import TokenEndpoint, VerifyPassword
from dockyard.http.routing import jwks_path, token_routes
from dockyard.http.web import build_web
from dockyard.http.worker import DEFAULT_BACKEND, is_asyncio, tcp_server_module
from dockyard.meta.open import open_meta
from dockyard.meta.records import StoreUnavailable
from dockyard.meta.store import Database, MetadataStore
from dockyard.observability.logs import configure_logging, log_request
from dockyard.observability.metrics import RegistryMetrics
from dockyard.observability.sampler import Sampler
from dockyard.observability.storage import TimedStore
from dockyard.scanning.queue import no_credentials
from dockyard.scanning.scanner import Scanner
from dockyard.services_cache import mount_cache
from dockyard.services_gc import collect_on_schedule
from dockyard.services_housekeeping import (
    build_pruner,
    build_quotas,
    mount_repositories,
    prune_events,
)
from dockyard.services_metrics import mount_metrics
from dockyard.services_replication import ReplicationService, build_replication
from dockyard.services_scanning import ScanningService, mount_scanning
from dockyard.storage.base import BlobStore, StorageError
from dockyard.storage.filesystem import FilesystemStore
from dockyard.storage.memory import MemoryStore

log = logging.getLogger("dockyard")


class TaskStarter(Protocol):
    """Where ``Services.start`` runs the background tasks: an anyio task group (the
    ASGI lifespan's) or a trio nursery (in-process tests and perf scripts on trio)."""

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: object = None
    ) -> object: ...

    async def start(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: object = None
    ) -> Any: ...


# /readyz answers "not ready" when a dependency takes longer than this: a balancer's health
# check should not hang on an unreachable database or object store.
READY_SECONDS = 5.0
# How often each worker asks whether a scheduled retention run is due (at most).
RETENTION_CHECK = 60.0


def instance_name(settings: Settings) -> str:
    return settings.server.instance or socket.gethostname()


def build_storage(settings: Settings) -> BlobStore:
    if settings.storage.driver == "memory":
        return MemoryStore()
    if settings.storage.driver == "s3":
        from dockyard.storage.s3 import S3Store  # botocore only when it is used

        return S3Store(settings.storage.s3)
    if settings.storage.driver == "gcs":
        # Imported here: deployments without GCS do not load its client.
        from dockyard.storage.gcs import GcsStore

        gcs = settings.storage.gcs
        return GcsStore(
            bucket=gcs.bucket,
            prefix=gcs.prefix,
            endpoint=gcs.endpoint,
            credentials_file=gcs.credentials_file,
            project=gcs.project,
        )
    if settings.storage.driver == "azure":
        # Imported here: the Azure SDK loads only where the driver is used.
        from dockyard.storage.azure import AzureStore
        from dockyard.storage.azure_client import AzureAccount

        a = settings.storage.azure
        account = AzureAccount(
            container=a.container,
            account_name=a.account_name,
            account_key=a.account_key,
            sas_token=a.sas_token,
            connection_string=a.connection_string,
            endpoint=a.endpoint,
        )
        return AzureStore(account, a.prefix)
    return FilesystemStore(settings.storage.root)


@dataclass
class Services:
    settings: Settings
    meta: MetadataStore
    db: Database
    storage: BlobStore
    pulls: PullEventWriter
    registry: Registry
    hub: EventHub
    app: RegistryApp
    webhooks: WebhookDeliverer | None = None
    sampler: Sampler | None = None
    retention: Retention | None = None
    replication: ReplicationService | None = None
    metrics: RegistryMetrics | None = None
    clock: Callable[[], float] = time.time
    cache: PullThroughCache | None = None
    scanning: ScanningService | None = None
    # Robot tokens and scanners' pull credentials; None when auth.mode is "none".
    robots: RobotTokens | None = None

    async def ready(self) -> bool:
        """Whether the database and the blob store both answer within READY_SECONDS."""
        with anyio.move_on_after(READY_SECONDS):
            try:
                await self.db.run(self.meta.repository_exists, "")
                await self.storage.check()
            except Exception:
                return False
            return True
        return False

    async def start(self, nursery: TaskStarter) -> None:
        soon = call_soon_threadsafe()
        hub = self.hub

        def committed() -> None:
            # Called in database worker threads: the event loop runs hub.notify soon after.
            soon(hub.notify)

        self.meta.on_events_committed = committed
        await nursery.start(self.hub.run)
        if self.webhooks is not None:
            await nursery.start(self.webhooks.run)
        if self.replication is not None:
            await nursery.start(self.replication.run)
        if self.scanning is not None:
            await nursery.start(self.scanning.run)
        await nursery.start(self.pulls.run)
        if self.sampler is not None:
            await nursery.start(self.sampler.run)
        nursery.start_soon(self._janitor)
        if self.settings.tls.cert and self.settings.tls.reload_interval > 0:
            from dockyard.tls import CERTIFICATES

            # Watches the context hypercorn asks TLSConfig for once this lifespan started.
            nursery.start_soon(CERTIFICATES.run, self.settings.tls.reload_interval)
        if self.retention is not None and self.settings.retention.interval > 0:
            nursery.start_soon(self._scheduled_retention, self.retention)
        pruner = build_pruner(self.settings, self.db, instance_name(self.settings))
        if pruner is not None:
            nursery.start_soon(prune_events, pruner, self.settings.events.prune_interval)
        if self.settings.gc.interval > 0:
            nursery.start_soon(
                collect_on_schedule,
                self.settings,
                self.db,
                self.storage,
                instance_name(self.settings),
                self.metrics,
                self.clock,
            )
        log.info("worker %d started", os.getpid())

    async def stop(self) -> None:
        """Flush pull events; the caller then cancels the nursery."""
        log.info("worker %d stopping", os.getpid())
        self.pulls.close()
        with anyio.move_on_after(5):
            await self.pulls.wait_finished()
        self.meta.on_events_committed = None
        await self.storage.aclose()
        if self.cache is not None:
            await self.cache.upstreams.aclose()
        if self.scanning is not None:
            await self.scanning.aclose()
        if self.sampler is not None:
            self.sampler.close()

    async def _janitor(self) -> None:
        while True:
            try:
                purged = await self.registry.purge_stale_uploads(self.settings.uploads.max_idle)
                if purged.sessions or purged.orphans:
                    log.info(
                        "purged %d stale uploads and %d orphaned upload files",
                        purged.sessions,
                        purged.orphans,
                    )
            except (StorageError, StoreUnavailable) as e:
                # The store or database is unreachable: /readyz says so too; not a bug.
                log.warning("purging stale uploads failed: %s; will retry", e)
            except Exception:
                log.exception("purging stale uploads failed; will retry")
            await anyio.sleep(self.settings.uploads.purge_interval)

    async def _scheduled_retention(self, retention: Retention) -> None:
        """Apply the retention policies once per ``[retention] interval`` across every
        worker and instance: whoever takes the schedule's lease (held for the interval,
        never released) runs; the others find it taken until the next interval."""
        interval = self.settings.retention.interval
        token = f"{instance_name(self.settings)}/{os.getpid()}-schedule"
        while True:
            await anyio.sleep(min(interval, RETENTION_CHECK))
            try:
                if not await self.db.run(
                    self.meta.job_acquire, SCHEDULE_JOB, f"{token}-{time.time()}", interval
                ):
                    continue
                report = await retention.run()
                self._retention_done(report)
            except JobBusy:
                log.info("retention: another run holds the lease; skipped this interval")
            except (StorageError, StoreUnavailable) as e:
                log.warning("retention run failed: %s; will retry", e)
            except Exception:
                log.exception("retention run failed; will retry")

    def _retention_done(self, report: RetentionReport) -> None:
        log.info(
            "retention deleted %d tags (%d bytes of images) in %d repositories",
            report.deleted_tags,
            report.bytes,
            report.repositories,
        )
        if self.metrics is not None:
            self.metrics.retention_deleted.inc(report.deleted_tags)
            self.metrics.retention_last_run.set(time.time())


def build(
    settings: Settings,
    clock: Callable[[], float] = time.time,
    scanner: Scanner | None = None,
) -> Services:
    """``scanner``: the scanner to use instead of the one ``[scanning]`` names (tests)."""
    meta = open_meta(settings, clock)
    meta.migrate()
    metrics = RegistryMetrics() if settings.metrics.enabled else None
    db = Database(meta, settings.database.threads, metrics.database_timer() if metrics else None)
    storage = build_storage(settings)
    if metrics is not None:
        storage = TimedStore(storage, metrics)
    pulls = PullEventWriter(
        db,
        settings.events.pull_buffer,
        settings.events.pull_flush_interval,
        enabled=settings.events.record_pulls,
    )
    policies = Policies(settings.retention.policies)
    registry = Registry(
        db,
        storage,
        pulls,
        instance=instance_name(settings),
        lease_seconds=settings.uploads.lease_seconds,
        gc_lease_seconds=settings.gc.lease_seconds,
        clock=clock,
        immutable=policies.immutable,
        quotas=build_quotas(settings, metrics.count_quota_refusal if metrics else None),
        require_layers=settings.manifests.require_layers,
    )
    services: Services

    async def ready() -> bool:
        return await services.ready()

    async def lifespan(nursery: TaskGroup) -> None:
        await services.start(nursery)

    async def shutdown() -> None:
        await services.stop()

    # Keys every worker of every instance shares live in the metadata store, not on disk.
    data_dir = Path(settings.storage.root)
    tickets = FeedTickets(shared_ticket_key(meta.shared_secret, data_dir))
    client_user = settings.tls.client_user if settings.tls.client_auth != "none" else None
    # Network lists, rate limits and the failed-login limiter (guard.logins), one per process.
    guard = build_guard(settings)
    robots = RobotTokens(db, clock) if settings.auth.mode != "none" else None
    app = RegistryApp(
        registry,
        build_authorizer(settings, meta.shared_secret, guard.logins, robots),
        max_manifest_bytes=settings.limits.max_manifest_bytes,
        default_page_size=settings.limits.default_page_size,
        max_page_size=settings.limits.max_page_size,
        ready=ready,
        lifespan=lifespan,
        on_shutdown=shutdown,
        observers=[
            *([log_request] if settings.log.access else []),
            *([metrics.observe] if metrics else []),
        ],
        statistics=Statistics(db, clock),
        web=build_web(backend=settings.server.backend),
        tickets=tickets,
        guard=guard,
        client_user=client_user,
        max_headers=settings.server.max_headers,
        body_pace=BodyPace(
            settings.server.min_body_rate,
            settings.server.body_rate_window,
            settings.server.body_timeout,
        ),
    )
    hub = EventHub(db, settings.events.poll_interval, settings.events.fallback_poll_interval)
    authorizer = app.authorizer
    if isinstance(authorizer, TokenAccessAuthorizer):
        users = authorizer.users

        async def verify_password(user: str, password: str) -> bool:
            return users is not None and await users.verify(user, password)

        mount_token_endpoint(
            app, settings, authorizer.tokens, verify_password, robots=robots, logins=guard.logins
        )
    app.websockets[FEED_PATH] = EventFeed(
        hub,
        app.authorizer,
        settings.events.feed_buffer,
        settings.events.heartbeat,
        tickets,
        app.guard,
        client_user,
    )
    repositories = mount_repositories(
        app, settings, db, instance_name(settings), clock, policies.immutable
    )
    services = Services(
        settings, meta, db, storage, pulls, registry, hub, app, metrics=metrics, clock=clock
    )
    services.robots = robots
    services.cache = mount_cache(app, settings, registry, metrics, instance_name(settings), clock)
    if settings.retention.policies:
        services.retention = Retention(db, policies, instance_name(settings), clock)
    if settings.webhooks:
        services.webhooks = WebhookDeliverer(
            db,
            hub,
            settings.webhooks,
            instance=instance_name(settings),
            base_url=settings.base_url,
            lease_seconds=settings.events.webhook_lease_seconds,
        )
    services.replication = build_replication(
        settings, db, hub, registry, storage, instance_name(settings), metrics, clock
    )
    services.scanning = mount_scanning(
        app,
        settings,
        db,
        hub,
        registry,
        repositories,
        instance_name(settings),
        metrics,
        clock,
        scanner=scanner,
        credentials=robots.pull_credentials if robots is not None else no_credentials,
        local_path=storage.local_path,
    )
    if metrics is not None:
        services.sampler = mount_metrics(
            app, settings, metrics, db, hub, pulls, lambda: services.webhooks
        )
    app.answers = answer_cache(settings, app, registry, db)
    return services


def answer_cache(
    settings: Settings, app: RegistryApp, registry: Registry, db: Database
) -> AnswerCache | None:
    """The manifest answers kept in memory (http/answers.py), where nothing about the
    caller can change an answer; None elsewhere."""
    if not settings.server.answer_cache or db.change_marker() is None:
        return None
    anyone_pulls_anything = (
        settings.auth.mode == "none"
        and app.guard.is_open("pull")
        and settings.tls.client_auth == "none"  # a certificate's user is the events' actor
    )
    if not anyone_pulls_anything or settings.upstreams or registry.manifests.pull_check:
        return None
    return AnswerCache(db.change_marker)


def mount_token_endpoint(
    app: RegistryApp,
    settings: Settings,
    tokens: TokenAuth,
    verify_password: VerifyPassword,
    robots: RobotTokens | None = None,
    logins: LoginLimiter | None = None,
) -> None:
    """Serve the built-in token service (auth.token.path) and its JWKS from ``app``."""
    if tokens.issuer is None:
        return
    endpoint = TokenEndpoint(tokens.issuer, verify_password, tokens.jwks, robots, logins)
    path = settings.auth.token.path
    app.add_routes(token_routes(endpoint, path), [path, jwks_path(path)])


def set_read_size(read_size: int, backend: str = DEFAULT_BACKEND) -> None:
    """Make hypercorn's server (of ``backend``'s worker) read up to ``read_size`` bytes
    per socket read.

    hypercorn has no setting for it (a module constant, 64 KiB, read at every call).
    Each read becomes one ASGI body message, and dockyard's per-message cost (h11 event,
    channel hop, task switch) dominated uploads: 256 KiB reads cut user CPU per GiB
    uploaded from 2.7 to 1.8 s (perf/RESULTS.md). Memory per upload stays bounded by
    hypercorn's app queue (``max_app_queue_size`` messages of at most this size).
    """
    check_read_size_hook(backend)
    module = tcp_server_module(backend)
    setattr(module, "MAX_RECV", read_size)  # noqa: B010 - checked above
    if is_asyncio(backend):
        _buffer_reads(module.TCPServer, read_size)


def _buffer_reads(server: Any, read_size: int) -> None:
    """Let the asyncio worker's ``StreamReader`` buffer up to ``read_size`` bytes.

    hypercorn reads each connection through an ``asyncio.StreamReader`` with its default
    64 KiB limit, which stops reading the socket once it holds more than 128 KiB: every
    body message was one transport read (256 KiB on uvloop), whatever ``read_size`` said.
    With room for ``read_size`` bytes, most messages carry ``read_size``.
    """
    server._dockyard_read_size = read_size
    if getattr(server, "_dockyard_buffered", False):
        return
    original_init = server.__init__

    # wraps: other hooks check the connection class's signature (http/websocket.py).
    @functools.wraps(original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        reader = self.reader
        # _limit is the StreamReader's pause threshold (it pauses above twice it).
        reader._limit = max(reader._limit, server._dockyard_read_size // 2)

    server.__init__ = init
    server._dockyard_buffered = True


def app_queue_size(read_size: int) -> int:
    """hypercorn's ``max_app_queue_size`` for ``read_size`` reads: as many body messages
    as make 1 MiB, at least 2 (one being handled while the next is read)."""
    return max(2, (1 << 20) // read_size)


def check_read_size_hook(backend: str = DEFAULT_BACKEND) -> None:
    """Fail fast if hypercorn no longer has the constant ``set_read_size`` replaces.

    Setting a missing module attribute would succeed silently and change nothing: uploads
    would quietly cost half again as much CPU. ``dockyard serve`` checks before it starts
    workers, and each worker again before it sets the constant.
    """
    from importlib.metadata import version

    module = tcp_server_module(backend)
    if not isinstance(getattr(module, "MAX_RECV", None), int):
        raise RuntimeError(
            f"hypercorn {version('hypercorn')} has no {module.__name__}.MAX_RECV, "
            "the socket read size dockyard sets (server.read_size); install a hypercorn "
            "version that has it (see constraints.txt) or update dockyard.services.set_read_size"
        )


def create_app() -> RegistryApp:
    """Entry point for each hypercorn worker process."""
    # Workers stop when the supervisor tells them (cli.py ignores both signals before it
    # starts them); workers it starts after a SIGHUP reload would die of a SIGTERM or
    # SIGHUP sent to the process group, as hypercorn handles both in the supervisor by then.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = load(os.environ.get("DOCKYARD_CONFIG") or None)
    configure_logging(settings)
    backend = settings.server.backend
    set_read_size(settings.server.read_size, backend)
    # Refuse ambiguous framing, invalid request lines and slow or large heads (http/edge.py;
    # hypercorn's HTTP/1 protocol, the same on every worker).
    edge.install(
        settings.server.header_timeout,
        settings.server.max_header_bytes,
        settings.server.max_headers,
    )
    # One connection's error inside hypercorn must not end the worker (http/h2edge.py).
    h2edge.install(backend)
    # Feeds hear of a graceful stop and close with 1001 (http/websocket.py).
    websocket.install_stop_notice(backend)
    # An idle keep-alive connection timed by one loop timer, not tasks (http/keepalive.py).
    keepalive.install_idle_timer(backend)
    return build(settings).app


def call_soon_threadsafe() -> Callable[[Callable[[], None]], object]:
    """A function that, from any thread, has the current event loop call a function soon
    (without waiting for it, unlike ``anyio.from_thread.run_sync``)."""
    native: Any = anyio.lowlevel.current_token().native_token
    # trio: its TrioToken; asyncio (uvloop included): the running loop.
    run_soon: Callable[[Callable[[], None]], object] = (
        native.run_sync_soon if hasattr(native, "run_sync_soon") else native.call_soon_threadsafe
    )
    return run_soon
