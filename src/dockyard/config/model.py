"""The settings model: one dataclass per config-file section, with their defaults.

The defaults here are the embedded defaults (the lowest layer, below the TOML file and
the ``DOCKYARD_*`` environment; see ``loader``); ``conf/dockyard.toml`` documents every
key. A field's type is the type the loader accepts for it: its annotation is read at load
time, so a field must keep a plain ``bool``, ``int``, ``float``, ``str``, list or dict
type. Nothing here checks values; ``validate`` does.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and how to fix it."""


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    # Name of this instance in events and upload leases; empty means the host name.
    instance: str = ""
    # Seconds to let in-flight requests finish on shutdown.
    graceful_timeout: float = 10.0
    # URL clients use to reach this registry (target URLs in webhook bodies); empty means
    # http://<host>:<port>.
    public_url: str = ""
    # Bytes read from a connection at a time: the largest request-body chunk handled at
    # once. Memory per upload is at most max(1 MiB, 2 such chunks) (hypercorn's app
    # queue, services.app_queue_size).
    read_size: int = 1024 * 1024
    # Peers (CIDRs) allowed to name the client in Forwarded / X-Forwarded-For: the reverse
    # proxies in front of dockyard. Empty: the peer is always the client.
    trusted_proxies: list[str] = field(default_factory=list)
    # The HTTP edge (docs/security.md): seconds a request head (line and headers) may take
    # in all, however it trickles in; seconds one read may wait for data (a silent client,
    # a stalled body; 0 disables); and bytes a request head may have (h11's limit).
    header_timeout: float = 10.0
    # read_timeout is off by default: it applies to websockets too, and feed clients send
    # nothing for long stretches (the server sends the heartbeats).
    read_timeout: int = 0
    max_header_bytes: int = 16 * 1024
    # Header lines a request may have (h11 and h2 have no such limit of their own).
    max_headers: int = 100
    # Request bodies (not websockets) may fall at most body_rate_window seconds' worth of
    # min_body_rate bytes/s behind that rate, and no wait for the next chunk may last
    # longer than body_timeout seconds; else 408 and the connection is closed (0 turns
    # either off). Only time spent waiting for the client counts (http/bodyrate.py).
    min_body_rate: int = 1024
    body_rate_window: float = 30.0
    body_timeout: float = 30.0
    # hypercorn's worker: "trio", or its asyncio worker on the standard event loop
    # ("asyncio") or on uvloop's ("uvloop", the dockyard[uvloop] extra). Same registry on
    # each; the asyncio ones cost less CPU per request (docs/architecture.md).
    backend: str = "trio"
    # Answer manifest GET and HEAD from memory while the database is unchanged, where
    # nothing about the caller can change the answer (http/answers.py says when).
    answer_cache: bool = True


@dataclass
class S3Settings:
    # The bucket (must exist) and the endpoint URL; empty endpoint: AWS for the region.
    bucket: str = ""
    endpoint: str = ""
    region: str = "us-east-1"
    # Empty: the environment (AWS_ACCESS_KEY_ID, ...), then the standard AWS chain.
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    # Key prefix inside the bucket (several registries may share one bucket).
    prefix: str = ""
    # http://endpoint/bucket/key instead of http://bucket.endpoint/key (most S3-compatible
    # servers need it).
    path_style: bool = False
    # Check the endpoint's TLS certificate; ca_bundle: a PEM file of CAs to trust instead.
    verify_tls: bool = True
    ca_bundle: str = ""
    # Server-side encryption: "", "AES256" or "aws:kms" (with sse_kms_key_id, or the
    # bucket's default KMS key when empty).
    sse: str = ""
    sse_kms_key_id: str = ""
    # Blob GETs answer 307 to a presigned URL valid for redirect_expiry seconds.
    redirect: bool = False
    redirect_expiry: int = 900
    # Connections to the store, and worker threads that run its calls.
    max_connections: int = 16
    # Bytes per upload part (memory per upload in flight; a blob has at most 10000 parts).
    part_size: int = 8 * 1024 * 1024
    # Attempts per request on throttling (503 SlowDown, 429) and 5xx, with backoff.
    max_attempts: int = 5


@dataclass
class GcsSettings:
    # [storage.gcs]: the bucket (required with driver "gcs") and a key prefix in it.
    bucket: str = ""
    prefix: str = ""
    # JSON API base URL; empty: Google's. A plain http:// one is an emulator
    # (fake-gcs-server), used without credentials unless credentials_file is set.
    endpoint: str = ""
    # Service account key file; empty: Application Default Credentials.
    credentials_file: str = ""
    # Project billed for requests (requester-pays buckets); empty: the bucket's owner.
    project: str = ""


@dataclass
class AzureStorageSettings:
    """``[storage.azure]``: Azure Blob Storage (docs/storage.md, "Azure Blob Storage")."""

    # The storage account, and one way in: its shared key, a SAS token, or a connection
    # string (which names the account and endpoint itself). Never logged or shown.
    account_name: str = ""
    account_key: str = field(default="", repr=False)
    sas_token: str = field(default="", repr=False)
    connection_string: str = field(default="", repr=False)
    # The container (created beforehand) and a key prefix inside it ("" for the whole
    # container).
    container: str = ""
    prefix: str = ""
    # Blob service URL (Azurite, sovereign clouds); empty: https://<account>.blob.core.windows.net.
    endpoint: str = ""


@dataclass
class StorageSettings:
    driver: str = "filesystem"
    # Data directory: blobs (filesystem driver) and the embedded database live here.
    root: str = "./data"
    s3: S3Settings = field(default_factory=S3Settings)
    gcs: GcsSettings = field(default_factory=GcsSettings)
    azure: AzureStorageSettings = field(default_factory=AzureStorageSettings)


@dataclass
class DatabaseSettings:
    # PostgreSQL shared by every instance, "postgresql://user:password@host:port/dbname"
    # (libpq URL; ?sslmode=... and other parameters pass through); empty means the
    # embedded SQLite file below.
    url: str = field(default="", repr=False)  # it may hold the password
    # SQLite file; empty means <storage.root>/dockyard.sqlite3.
    path: str = ""
    # Worker threads that run database calls: calls beyond this many wait their turn, so
    # a burst of requests cannot open a thread (and a SQLite connection) each. With
    # PostgreSQL also the most pooled connections a worker process opens.
    threads: int = 4
    # Seconds a writer waits for another process's write lock (PostgreSQL: also for a
    # pooled connection).
    busy_timeout: float = 10.0


def redact_url(url: str) -> str:
    """``url`` with its password replaced: for logs, errors and ``dockyard config``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:<redacted>@{host}"))


@dataclass
class LimitsSettings:
    # Largest manifest accepted (the spec asks registries to accept at least 4 MiB).
    max_manifest_bytes: int = 4 * 1024 * 1024
    # Page size of tag lists, catalog and referrers when the client gives no n.
    default_page_size: int = 1000
    max_page_size: int = 10000


@dataclass
class UploadsSettings:
    # An upload untouched for this many seconds is purged with its bytes.
    max_idle: float = 24 * 3600.0
    # How often the janitor looks for stale uploads.
    purge_interval: float = 600.0
    # A PATCH holds its upload for at most this long without progress.
    lease_seconds: float = 60.0


@dataclass
class EventsSettings:
    # Record pull events (batched off the request path).
    record_pulls: bool = True
    # Pull events waiting to be written; beyond this they are dropped and counted.
    pull_buffer: int = 10000
    # Longest a pull event waits before its batch is written, in seconds.
    pull_flush_interval: float = 0.5
    # How often each worker looks for events written by other workers, in seconds.
    poll_interval: float = 0.025
    # With PostgreSQL, other workers and instances wake the event hub at once (LISTEN/
    # NOTIFY) and it polls only this often, in case a wake-up was lost.
    fallback_poll_interval: float = 1.0
    # Events a websocket subscriber may fall behind before it is disconnected.
    feed_buffer: int = 1000
    # Idle seconds before the feed sends a heartbeat message (clients take a silence of
    # about two heartbeats for a dead connection).
    heartbeat: float = 15.0
    # One process delivers to each webhook endpoint at a time; it holds a lease in the
    # database for this many seconds, renewed while it delivers.
    webhook_lease_seconds: float = 30.0
    # Pull events older than this many days are pruned (0: kept forever). Pulls are most
    # of the log on a busy registry, and the dashboard needs only its last day.
    keep_pulls_days: float = 30.0
    # Every other event (pushes, deletes: the audit trail) older than this many days is
    # pruned; 0 keeps them forever.
    keep_days: float = 0.0
    # Seconds between prunes run by the server itself (0: only `dockyard events prune`).
    prune_interval: float = 3600.0
    # Events deleted per transaction: short enough that no writer waits long for one.
    prune_batch_size: int = 5000


@dataclass
class LogSettings:
    level: str = "info"
    # One line per request (observability/logs.py log_request), whatever the level: operators expect
    # a request log, and it costs little (perf/RESULTS.md).
    access: bool = True
    # "json": ECS lines a log stack reads without mapping; "text": for a terminal.
    format: str = "json"
    # "" writes to stderr; else this file, appended to, reopened when it is moved (logrotate).
    file: str = ""


@dataclass
class MetricsSettings:
    """``[metrics]``: Prometheus metrics (docs/monitoring.md)."""

    # Serve metrics at all (and count them: off, requests cost nothing extra).
    enabled: bool = True
    # Where the Prometheus text format is served.
    path: str = "/metrics"
    # "host:port" of a separate listener that serves only ``path`` (and no API); empty:
    # metrics are served on the main port.
    listen: str = ""
    # Seconds the images-stored figures (counted in the database) are reused by scrapes.
    inventory_cache: float = 5.0


AUTH_MODES = ("none", "basic", "token")


TOKEN_ALGORITHMS = (
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
)


@dataclass
class TokenSettings:
    """``[auth.token]``: the built-in token service and the tokens the registry accepts."""

    # Run the built-in token service (the endpoint at ``path``, signing with ``key``).
    # Off when only an external issuer's tokens are accepted.
    builtin: bool = True
    # PEM private key (EC P-256/P-384/P-521, RSA or Ed25519) that signs issued tokens;
    # empty: an EC P-256 key generated at first start, kept in the metadata store.
    key: str = ""
    # "iss" of issued tokens and the issuer accepted tokens must name.
    issuer: str = "dockyard"
    # The service name: "aud" of issued tokens, the audience accepted tokens must name and
    # the service= clients send (advertised in challenges).
    audience: str = "dockyard"
    # Signature algorithms accepted (asymmetric only; "none" and HMAC are refused).
    algorithms: list[str] = field(default_factory=lambda: ["ES256", "RS256"])
    # Seconds an issued access token is valid.
    expiry: int = 300
    # Seconds a refresh token (offline_token=true, access_type=offline) is valid.
    refresh_expiry: int = 7 * 24 * 3600
    # Seconds of clock skew allowed on exp, nbf and iat.
    leeway: int = 30
    # The token endpoint's path on this server, and the URL advertised as the challenge
    # realm (empty: <server.public_url or http://host:port><path>).
    path: str = "/auth/token"
    realm: str = ""
    # An external issuer's keys: a JWKS file path or an https:// URL (empty: none).
    jwks: str = ""
    # Seconds between fetches of a jwks URL, and the least time between two fetches when a
    # token names an unknown key id.
    jwks_refresh: int = 3600
    jwks_min_interval: int = 30
    # PEM bundle of CA certificates to verify a jwks URL's TLS certificate with (a private
    # issuer's CA); empty: the default trust store.
    jwks_ca: str = ""
    # PEM bundle of CA certificates that tokens carrying an x5c chain must chain to.
    root_certificates: str = ""


@dataclass
class AuthSettings:
    # "none": everyone may do everything; "basic": users of the htpasswd file and the
    # [[access]] rules; "token": bearer tokens (the token service).
    mode: str = "none"
    # The users file (bcrypt entries, as `htpasswd -B` and `dockyard users` write).
    htpasswd: str = ""
    # The realm of the Basic challenge (clients may show it when asking for a password).
    realm: str = "dockyard"
    # Seconds a verified user name and password are remembered (as a keyed hash), so
    # clients that send them with every request cost one bcrypt per period.
    cache_seconds: float = 60.0
    # [auth.token]: the token service and the tokens accepted (mode "token").
    token: TokenSettings = field(default_factory=TokenSettings)


@dataclass
class AccessSettings:
    """One ``[[access]]`` rule: these users may do these actions on these repositories."""

    # User names, "anonymous" (no credentials) or "*" (any authenticated user).
    users: list[str] = field(default_factory=list)
    # Repository globs; "*" matches "/" too.
    repositories: list[str] = field(default_factory=list)
    # pull, push, delete, admin, metrics; "*" for all.
    actions: list[str] = field(default_factory=list)


@dataclass
class QuotaSettings:
    """One ``[[quotas]]`` table; the first that matches a repository applies to it."""

    # Repository globs ("*" matches "/"): the limit applies to each matching repository
    # on its own.
    repositories: list[str] = field(default_factory=list)
    # Or a namespace ("team" covers "team" and "team/..."): the limit applies to all its
    # repositories together, each blob counted once.
    namespace: str = ""
    # Bytes of blobs and manifests the repository (or namespace) may hold.
    max_bytes: int = 0


WEBHOOK_FORMATS = ("distribution", "cloudevents", "dockyard")


@dataclass
class WebhookSettings:
    """One ``[[webhooks]]`` endpoint; ``name`` and ``url`` are required."""

    name: str = ""
    url: str = ""
    # Extra request headers (for example Authorization).
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds one delivery attempt may take, connection included.
    timeout: float = 5.0
    # "distribution" (CNCF Distribution envelope), "cloudevents" or "dockyard" (native).
    format: str = "distribution"
    # When set, X-Dockyard-Signature: sha256=<HMAC-SHA256 of the body with this key>.
    secret: str = ""
    # Filters (empty: everything): repository globs, actions, media types (or "type/*").
    repositories: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    media_types: list[str] = field(default_factory=list)
    # Attempts per event before it is recorded as failed and the endpoint moves on.
    max_attempts: int = 10
    # Seconds before the first retry; each retry doubles it, up to backoff_max.
    backoff_initial: float = 1.0
    backoff_max: float = 60.0


@dataclass
class GcSettings:
    # Seconds after a blob's upload or link, or a manifest's push, during which garbage
    # collection leaves it alone: the window between a CI job's layer uploads and its
    # manifest PUT (docs/gc.md).
    grace_period: float = 3600.0
    # Seconds between collections run by the server itself (0: only `dockyard gc`).
    interval: float = 0.0
    # Also list the storage for bytes that have no metadata at all (slow on object stores).
    walk_storage: bool = False
    # Rows deleted per transaction: small enough that pushes never wait long for one.
    batch_size: int = 500
    # Seconds the collector's lease lasts unless renewed (one collector at a time).
    lease_seconds: float = 60.0


@dataclass
class RetentionPolicy:
    # Repository globs ("*" matches "/"); the first policy that matches a repository applies.
    repositories: list[str] = field(default_factory=list)
    # Keep the N most recently pushed tags (0: no such rule).
    keep_last: int = 0
    # Tags matching any of these regular expressions (whole tag) are always kept.
    keep_tags: list[str] = field(default_factory=list)
    # Delete tags pushed more than this many days ago (0: no such rule).
    delete_older_than_days: float = 0.0
    # Delete tags not pulled for this many days, counted from the push if never pulled.
    delete_unpulled_days: float = 0.0
    # Garbage collection deletes untagged manifests pushed more than this many days ago
    # (0: untagged manifests are kept).
    delete_untagged_days: float = 0.0
    # Tags matching these regular expressions are immutable: no push may move them, no
    # policy and no DELETE may remove them.
    immutable_tags: list[str] = field(default_factory=list)


@dataclass
class RetentionSettings:
    # Seconds between policy runs by the server itself (0: only `dockyard retention run`).
    interval: float = 0.0
    policies: list[RetentionPolicy] = field(default_factory=list)


@dataclass
class ManifestsSettings:
    # Refuse an image manifest whose layers and config are not all stored in the
    # repository (MANIFEST_BLOB_UNKNOWN). false: accept such sparse manifests (a mirror
    # may hold part of an image); a missing layer is then 404 BLOB_UNKNOWN unless the
    # repository is under an upstream's prefix, which fetches it (docs/proxy.md).
    require_layers: bool = True


@dataclass
class RemoteRegistry:
    """A registry dockyard is a client of: an upstream, a replication target or source."""

    # Base URL, http:// or https://, without /v2/ ("https://registry-1.docker.io").
    url: str = ""
    # Credentials: sent as Basic auth, or to the token endpoint the registry's
    # WWW-Authenticate challenge names (empty: anonymous).
    username: str = ""
    password: str = field(default="", repr=False)
    # Verify the registry's TLS certificate (against ca_bundle when set).
    verify_tls: bool = True
    ca_bundle: str = ""
    # Seconds to connect, and between bytes of a response.
    timeout: float = 30.0


@dataclass
class UpstreamSettings(RemoteRegistry):
    """One ``[[upstreams]]`` registry that dockyard caches (pull-through); ``name``,
    ``url`` and ``prefix`` are required."""

    name: str = ""
    # Local repositories "<prefix>/<path>" are the upstream's "<path>"
    # ("hub" maps hub/library/alpine to library/alpine).
    prefix: str = ""
    # The ns= value containerd sends when dockyard is its mirror for this registry
    # (empty: the url's host[:port], "docker.io" for registry-1.docker.io).
    namespace: str = ""
    # Seconds a tag resolved upstream is served from the cache before it is asked again.
    tag_ttl: float = 300.0


@dataclass
class ReplicationEndpoint(RemoteRegistry):
    # The remote side's repository for local "<name>" is "<prefix>/<name>" (empty: "<name>").
    prefix: str = ""


REPLICATION_MODES = ("push", "pull")


@dataclass
class ReplicationRule:
    """One ``[[replication]]`` rule; ``name`` is required, and targets (push) or a
    source (pull)."""

    name: str = ""
    # "push": after each matching push, copy the image to every target (from the event
    # log, at least once). "pull": every ``interval`` seconds, copy what matches from
    # ``source``.
    mode: str = "push"
    # Repository globs ("*" matches "/"; empty: every repository) and tag regular
    # expressions (whole tag; empty: every tag).
    repositories: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    # Copy the referrers (signatures, SBOMs, ...) of each copied manifest too.
    referrers: bool = True
    # [[replication.targets]] (push) and [replication.source] (pull).
    targets: list[ReplicationEndpoint] = field(default_factory=list)
    source: ReplicationEndpoint = field(default_factory=ReplicationEndpoint)
    # Pull mode: seconds between runs.
    interval: float = 300.0
    # Attempts per image before it is recorded as failed and the rule moves on; seconds
    # before the first retry, doubling up to backoff_max.
    max_attempts: int = 10
    backoff_initial: float = 1.0
    backoff_max: float = 60.0


SCANNERS = ("", "trivy", "harbor")
SCAN_PRIORITIES = ("idle", "low", "normal")
# Vulnerability severities, lowest first (Trivy's and Harbor's names).
SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")


@dataclass
class HarborScannerSettings:
    """``[scanning.harbor]``: an adapter speaking Harbor's Pluggable Scanner API v1.2."""

    # Base URL of the adapter (the API is under <url>/api/v1).
    url: str = ""
    # Sent as the Authorization header to the adapter ("Bearer <token>", "Basic <...>").
    authorization: str = field(default="", repr=False)
    verify_tls: bool = True
    ca_bundle: str = ""
    # Seconds between polls of a report that is not ready, when the adapter names none.
    poll_interval: float = 2.0


@dataclass
class ScannerAdapterSettings:
    """``[scanning.adapter]``: ``dockyard scanner-adapter``, which serves Harbor's
    Pluggable Scanner API v1.2 over the built-in Trivy runner (scanning/adapter.py)."""

    # The Authorization header callers must send ("Bearer <token>" or "Basic <...>",
    # compared exactly; empty: no check, for a loopback-only adapter).
    authorization: str = field(default="", repr=False)
    # Seconds a finished scan's report stays retrievable.
    report_ttl: float = 3600.0
    # Scans accepted but not finished at once; more are refused with 503 and Retry-After.
    max_pending: int = 100


@dataclass
class ScanPolicy:
    """One ``[[scanning.policies]]`` table; the first whose globs match a repository
    applies to its manifest pulls."""

    repositories: list[str] = field(default_factory=list)
    # Refuse pulls of an image with a finding at or above this severity ("": never).
    block_severity: str = ""
    # Refuse pulls of an image that has not been scanned (yet).
    require_scan: bool = False
    # Findings with these ids (CVE-..., GHSA-...) do not count; images with these
    # digests are never refused.
    exempt_cves: list[str] = field(default_factory=list)
    exempt_digests: list[str] = field(default_factory=list)


@dataclass
class ScanningSettings:
    # "trivy" (the built-in Trivy runner), "harbor" (an adapter of Harbor's scanner API,
    # [scanning.harbor]) or "" (no scanning).
    scanner: str = ""
    # The trivy binary (empty: the one on PATH, else next to the interpreter: pip).
    trivy: str = ""
    # trivy --server URL: scan through a `trivy server` instead of a local database.
    trivy_server: str = ""
    # Where trivy downloads its vulnerability database ("HOST:PORT/REPO", passed to
    # --db-repository; empty: trivy's default). It may be dockyard itself.
    db_repository: str = ""
    # trivy's cache directory (database, layers; empty: <storage root>/trivy-cache).
    cache_dir: str = ""
    # Scan every pushed manifest (or those in ``repositories``) after the push.
    on_push: bool = False
    # Repository globs scanned on push (empty: every repository).
    repositories: list[str] = field(default_factory=list)
    # Also store a CycloneDX SBOM next to each report.
    sbom: bool = False
    # CPU priority of the scanner's processes: "idle" (Linux SCHED_IDLE: only CPU time
    # nothing else wants, so scans never slow pushes and pulls), "low" (nice 19) or
    # "normal".
    priority: str = "idle"
    # Scans start once nothing has been pushed for ``quiet`` seconds: pushes come in
    # storms (a CI farm's builds), and a scan waits for the storm's end rather than
    # taking its CPU and disk. Under pushes that never pause, each scan worker still
    # starts a scan after ``quiet_max`` seconds of waiting. 0: scans start at once.
    quiet: float = 1.0
    quiet_max: float = 30.0
    # Scans running at once in each instance; seconds one scan may take.
    concurrency: int = 2
    timeout: float = 600.0
    # A failed scan is tried again after backoff_initial seconds, doubling up to
    # backoff_max (it is never dropped).
    backoff_initial: float = 5.0
    backoff_max: float = 600.0
    # Seconds between looks at the vulnerability database for a new version, which
    # rescans what was scanned with an older one (0: never).
    rescan_interval: float = 3600.0
    harbor: HarborScannerSettings = field(default_factory=HarborScannerSettings)
    adapter: ScannerAdapterSettings = field(default_factory=ScannerAdapterSettings)
    policies: list[ScanPolicy] = field(default_factory=list)


TLS_VERSIONS = ("1.2", "1.3")
CLIENT_AUTH_MODES = ("none", "optional", "required")
# Action classes of network lists and rate limits (auth/network.py, auth/limits.py).
ACTION_CLASSES = ("pull", "push", "delete", "admin", "metrics")


@dataclass
class TLSSettings:
    # PEM certificate chain and private key; both set means the server speaks only HTTPS.
    cert: str = ""
    key: str = ""
    # Oldest TLS version accepted: "1.2" or "1.3".
    min_version: str = "1.2"
    # Client certificates: "none", "optional" (verified when sent) or "required".
    client_auth: str = "none"
    # PEM bundle of the CAs client certificates must chain to.
    client_ca: str = ""
    # Subject attribute of a verified client certificate that becomes the user name
    # ("CN", "emailAddress", "UID", ...).
    client_user: str = "CN"
    # Seconds between looks at cert and key for a replaced certificate (0: never).
    reload_interval: float = 5.0


@dataclass
class NetworkRule:
    # CIDRs; deny wins over allow, and an empty allow list allows every address.
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)


@dataclass
class NetworkSettings:
    pull: NetworkRule = field(default_factory=NetworkRule)
    push: NetworkRule = field(default_factory=NetworkRule)
    delete: NetworkRule = field(default_factory=NetworkRule)
    admin: NetworkRule = field(default_factory=NetworkRule)
    metrics: NetworkRule = field(default_factory=NetworkRule)


@dataclass
class RateLimit:
    # Requests per second refilled, and the bucket size; rate 0 means no limit.
    rate: float = 0.0
    burst: int = 0


@dataclass
class LoginLimit:
    # Failed logins per (client address, user name): strict, so guessing from one place
    # is slow.
    rate: float = 0.1
    burst: int = 5
    # Failed logins per user name from anywhere: looser, so an attack spread over many
    # addresses is slowed while the real user elsewhere waits a second at most.
    user_rate: float = 1.0
    user_burst: int = 50


@dataclass
class RateLimitSettings:
    pull: RateLimit = field(default_factory=RateLimit)
    push: RateLimit = field(default_factory=RateLimit)
    delete: RateLimit = field(default_factory=RateLimit)
    admin: RateLimit = field(default_factory=RateLimit)
    metrics: RateLimit = field(default_factory=RateLimit)
    login: LoginLimit = field(default_factory=LoginLimit)
    # Buckets kept per process at most; the least recently used go first beyond it.
    max_buckets: int = 100000


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    uploads: UploadsSettings = field(default_factory=UploadsSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    manifests: ManifestsSettings = field(default_factory=ManifestsSettings)
    upstreams: list[UpstreamSettings] = field(default_factory=list)
    replication: list[ReplicationRule] = field(default_factory=list)
    scanning: ScanningSettings = field(default_factory=ScanningSettings)
    webhooks: list[WebhookSettings] = field(default_factory=list)
    access: list[AccessSettings] = field(default_factory=list)
    quotas: list[QuotaSettings] = field(default_factory=list)

    @property
    def database_path(self) -> Path:
        if self.database.path:
            return Path(self.database.path)
        return Path(self.storage.root) / "dockyard.sqlite3"

    @property
    def base_url(self) -> str:
        """The registry's URL as clients see it: server.public_url, else from host:port."""
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        host = self.server.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls.cert else "http"
        return f"{scheme}://{host}:{self.server.port}"


STORAGE_DRIVERS = ("filesystem", "memory", "s3", "azure", "gcs")
# [server] backend: hypercorn's trio worker, or its asyncio worker (uvloop's loop or not).
SERVER_BACKENDS = ("trio", "asyncio", "uvloop")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
