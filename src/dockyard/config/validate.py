"""Validation of loaded settings: values in range, known names, well-formed webhooks.

``validate`` runs once, on the fully layered settings (so a value from the file and one
from the environment are checked together, for example default_page_size against
max_page_size). Each failure raises ``ConfigError`` with the key and how to fix it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

from dockyard.actions import ACTIONS
from dockyard.config.model import (
    ACTION_CLASSES,
    AUTH_MODES,
    CLIENT_AUTH_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    SERVER_BACKENDS,
    STORAGE_DRIVERS,
    TLS_VERSIONS,
    TOKEN_ALGORITHMS,
    WEBHOOK_FORMATS,
    ConfigError,
    GcsSettings,
    Settings,
    TokenSettings,
    WebhookSettings,
)
from dockyard.config.validate_azure import validate_azure
from dockyard.config.validate_gc import validate_gc
from dockyard.config.validate_replication import validate_replication
from dockyard.config.validate_retention import validate_retention
from dockyard.config.validate_s3 import validate_s3
from dockyard.config.validate_scanning import validate_scanning
from dockyard.config.validate_upstreams import validate_upstreams

_WEBHOOK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Headers dockyard sets itself on every delivery.
_RESERVED_HEADERS = ("content-type", "content-length", "host", "transfer-encoding")


def _validate_webhooks(hooks: list[WebhookSettings]) -> None:
    seen: set[str] = set()
    for i, h in enumerate(hooks):
        key = f"webhooks[{i}]"
        if not h.name:
            raise ConfigError(f"{key}.name: every [[webhooks]] endpoint needs a name")
        if not _WEBHOOK_NAME.fullmatch(h.name):
            raise ConfigError(
                f"{key}.name: {h.name!r} is not a valid name (letters, digits, '.', '_', '-';"
                " at most 64)"
            )
        if h.name in seen:
            raise ConfigError(f"{key}.name: duplicate endpoint name {h.name!r}")
        # Replication's consumers share the webhook cursor table under these names
        # (the name pattern above has no ':' either; this says why).
        if h.name.startswith("replication:"):
            raise ConfigError(f"{key}.name: names starting with 'replication:' are reserved")
        seen.add(h.name)
        key = f"{key} ({h.name})"
        if not h.url:
            raise ConfigError(f"{key}.url: every [[webhooks]] endpoint needs a url")
        try:
            url = urlsplit(h.url)
            url.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"{key}.url: {h.url!r} is not an http:// or https:// URL")
        for header in h.headers:
            lower = header.lower()
            if lower in _RESERVED_HEADERS or lower.startswith("x-dockyard-"):
                raise ConfigError(f"{key}.headers: {header!r} is set by dockyard itself")
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
                raise ConfigError(f"{key}.headers: {header!r} is not a valid header name")
        for header, header_value in h.headers.items():
            if any(c in header_value for c in "\r\n\0"):
                raise ConfigError(f"{key}.headers: the value of {header!r} has a line break")
        if h.format not in WEBHOOK_FORMATS:
            raise ConfigError(
                f"{key}.format: unknown format {h.format!r} "
                f"(choose one of: {', '.join(WEBHOOK_FORMATS)})"
            )
        for action in h.actions:
            if action not in ACTIONS:
                raise ConfigError(
                    f"{key}.actions: unknown action {action!r} (actions: {', '.join(ACTIONS)})"
                )
        for media_type in h.media_types:
            if "*" in media_type and not (media_type.endswith("/*") and media_type.count("*") == 1):
                raise ConfigError(
                    f"{key}.media_types: {media_type!r}: give an exact media type or 'type/*'"
                )
        if h.timeout <= 0:
            raise ConfigError(f"{key}.timeout: must be positive")
        if h.max_attempts < 1:
            raise ConfigError(f"{key}.max_attempts: must be at least 1")
        if h.backoff_initial <= 0 or h.backoff_max < h.backoff_initial:
            raise ConfigError(
                f"{key}.backoff_initial, backoff_max: need 0 < backoff_initial <= backoff_max"
            )


# The [[access]] actions (auth.ACCESS_ACTIONS; config sits below auth, so spelled here).
ACCESS_ACTIONS = ("pull", "push", "delete", "admin", "metrics")


def _validate_auth(s: Settings) -> None:
    auth = s.auth
    if auth.mode not in AUTH_MODES:
        raise ConfigError(f"auth.mode: choose one of {', '.join(AUTH_MODES)}, not {auth.mode!r}")
    if auth.mode == "token" and auth.token.builtin and not auth.htpasswd:
        raise ConfigError(
            'auth.htpasswd: the built-in token service (auth.mode = "token") logs users in'
            " from a users file (create one with `dockyard users add NAME --htpasswd PATH`)"
        )
    if auth.mode == "basic" and not auth.htpasswd:
        raise ConfigError(
            'auth.htpasswd: auth.mode = "basic" needs a users file (create one with'
            " `dockyard users add NAME --htpasswd PATH`)"
        )
    if auth.cache_seconds < 0:
        raise ConfigError("auth.cache_seconds: must be 0 or more")
    if any(c in auth.realm for c in '"\\\r\n'):
        raise ConfigError("auth.realm: no quotes, backslashes or line breaks")
    if s.access and auth.mode == "none":
        raise ConfigError(
            '[[access]] rules are set but auth.mode is "none", which lets everyone do'
            ' everything: set auth.mode = "basic" (or remove the rules)'
        )
    for i, rule in enumerate(s.access):
        key = f"access[{i}]"
        if not rule.users or not rule.repositories or not rule.actions:
            raise ConfigError(f"{key}: every [[access]] rule needs users, repositories and actions")
        for action in rule.actions:
            if action != "*" and action not in ACCESS_ACTIONS:
                raise ConfigError(
                    f"{key}.actions: unknown action {action!r}"
                    f' (actions: {", ".join(ACCESS_ACTIONS)}, or "*")'
                )
        for user in rule.users:
            if not user or ":" in user or not user.isprintable():
                raise ConfigError(f"{key}.users: {user!r} is not a user name")
        for glob in rule.repositories:
            if not glob:
                raise ConfigError(f"{key}.repositories: an empty glob matches nothing")


def _validate_cidrs(key: str, cidrs: list[str]) -> None:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(
                f"{key}: {cidr!r} is not an address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)"
            ) from None


def _validate_file(key: str, path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: {path!r} is not a readable file")


def _validate_tls(s: Settings) -> None:
    tls = s.tls
    if bool(tls.cert) != bool(tls.key):
        raise ConfigError("tls.cert, tls.key: give both (HTTPS) or neither (plain HTTP)")
    if tls.cert:
        _validate_file("tls.cert", tls.cert)
        _validate_file("tls.key", tls.key)
    if tls.min_version not in TLS_VERSIONS:
        raise ConfigError(f"tls.min_version: choose one of {', '.join(TLS_VERSIONS)}")
    if tls.client_auth not in CLIENT_AUTH_MODES:
        raise ConfigError(f"tls.client_auth: choose one of {', '.join(CLIENT_AUTH_MODES)}")
    if tls.client_auth != "none":
        if not tls.cert:
            raise ConfigError("tls.client_auth: client certificates need tls.cert and tls.key")
        if not tls.client_ca:
            raise ConfigError("tls.client_ca: client_auth needs the CA bundle to verify with")
        _validate_file("tls.client_ca", tls.client_ca)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", tls.client_user):
        raise ConfigError("tls.client_user: a subject attribute name such as CN or emailAddress")
    if tls.reload_interval < 0:
        raise ConfigError("tls.reload_interval: must be 0 (never) or positive")


def _validate_network_and_limits(s: Settings) -> None:
    _validate_cidrs("server.trusted_proxies", s.server.trusted_proxies)
    for action_class in ACTION_CLASSES:
        rule = getattr(s.network, action_class)
        _validate_cidrs(f"network.{action_class}.allow", rule.allow)
        _validate_cidrs(f"network.{action_class}.deny", rule.deny)
        limit = getattr(s.rate_limits, action_class)
        if limit.rate < 0 or (limit.rate > 0 and limit.burst < 1):
            raise ConfigError(
                f"rate_limits.{action_class}: rate must be >= 0, and burst >= 1 when rate > 0"
            )
    login = s.rate_limits.login
    if min(login.rate, login.user_rate) <= 0 or min(login.burst, login.user_burst) < 1:
        raise ConfigError("rate_limits.login: rates must be positive and bursts at least 1")
    if s.rate_limits.max_buckets < 1000:
        raise ConfigError("rate_limits.max_buckets: must be at least 1000")


def _validate_token(t: TokenSettings) -> None:
    for alg in t.algorithms:
        if alg not in TOKEN_ALGORITHMS:
            raise ConfigError(
                f"auth.token.algorithms: {alg!r} is not accepted (asymmetric signatures only:"
                f" {', '.join(TOKEN_ALGORITHMS)})"
            )
    if not t.algorithms:
        raise ConfigError("auth.token.algorithms: name at least one algorithm")
    if not t.issuer or not t.audience:
        raise ConfigError("auth.token.issuer and auth.token.audience: must not be empty")
    if t.expiry < 1 or t.refresh_expiry < 1:
        raise ConfigError("auth.token.expiry and auth.token.refresh_expiry: must be positive")
    if t.leeway < 0:
        raise ConfigError("auth.token.leeway: must not be negative")
    if t.jwks_refresh < 1 or t.jwks_min_interval < 0:
        raise ConfigError("auth.token.jwks_refresh must be positive, jwks_min_interval >= 0")
    # Outside /v2/: a path under it would collide with the repository name grammar.
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", t.path) or t.path.startswith(("/v2/", "/v2")):
        raise ConfigError(
            f"auth.token.path: {t.path!r} must be an absolute path outside /v2 (e.g. /auth/token)"
        )
    if (
        t.path in ("/healthz", "/readyz")
        or t.path.startswith("/dashboard")
        or t.path.endswith("/jwks.json")
    ):
        raise ConfigError(
            f"auth.token.path: {t.path!r} is taken (health checks, the dashboard, the JWKS)"
        )
    if t.realm:
        realm = urlsplit(t.realm)
        if realm.scheme not in ("http", "https") or not realm.netloc or '"' in t.realm:
            raise ConfigError(f"auth.token.realm: {t.realm!r} is not an http(s) URL")
    jwks_url = t.jwks.startswith(("http://", "https://"))
    if jwks_url and (not t.jwks.startswith("https://") or not urlsplit(t.jwks).hostname):
        raise ConfigError(f"auth.token.jwks: {t.jwks!r}: give a file path or an https:// URL")
    if not t.builtin and not t.jwks and not t.root_certificates:
        raise ConfigError(
            "auth.token: with builtin = false, set jwks or root_certificates (the external"
            " issuer's keys); otherwise no token could be verified"
        )


def _validate_gcs(g: GcsSettings) -> None:
    # Bucket names: 3-63 (dotted: up to 222) lower-case letters, digits, - _ and dots.
    if not g.bucket:
        raise ConfigError('storage.gcs.bucket: required with storage.driver = "gcs"')
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", g.bucket):
        raise ConfigError(f"storage.gcs.bucket: {g.bucket!r} is not a bucket name")
    if g.endpoint and (
        not g.endpoint.startswith(("http://", "https://")) or not urlsplit(g.endpoint).hostname
    ):
        raise ConfigError(f"storage.gcs.endpoint: {g.endpoint!r}: give an http(s):// URL")
    if g.credentials_file and not os.path.isfile(g.credentials_file):
        raise ConfigError(f"storage.gcs.credentials_file: {g.credentials_file!r} is not a file")


def validate(s: Settings) -> None:
    if s.storage.driver not in STORAGE_DRIVERS:
        raise ConfigError(
            f"storage.driver: unknown driver {s.storage.driver!r} "
            f"(choose one of: {', '.join(STORAGE_DRIVERS)})"
        )
    if s.storage.driver == "s3":
        validate_s3(s.storage.s3)
    if s.storage.driver == "gcs":
        _validate_gcs(s.storage.gcs)
    if not 0 <= s.server.port <= 65535:
        raise ConfigError(f"server.port: {s.server.port} is not a TCP port")
    if not 16 * 1024 <= s.server.read_size <= 16 * 1024 * 1024:
        raise ConfigError("server.read_size: must be between 16384 and 16777216 bytes")
    if not 0 < s.server.header_timeout <= 3600:
        raise ConfigError("server.header_timeout: must be more than 0 and at most 3600 seconds")
    if not 0 <= s.server.read_timeout <= 86400:
        raise ConfigError("server.read_timeout: must be between 0 (off) and 86400 seconds")
    if not 1024 <= s.server.max_header_bytes <= 1024 * 1024:
        raise ConfigError("server.max_header_bytes: must be between 1024 and 1048576 bytes")
    if not 1 <= s.server.max_headers <= 10000:
        raise ConfigError("server.max_headers: must be between 1 and 10000")
    if not 0 <= s.server.min_body_rate <= 1024 * 1024 * 1024:
        raise ConfigError("server.min_body_rate: must be between 0 (off) and 1073741824 bytes/s")
    if not 1 <= s.server.body_rate_window <= 3600:
        raise ConfigError("server.body_rate_window: must be between 1 and 3600 seconds")
    if not 0 <= s.server.body_timeout <= 86400:
        raise ConfigError("server.body_timeout: must be between 0 (off) and 86400 seconds")
    if s.server.workers < 1:
        raise ConfigError("server.workers: must be at least 1")
    if s.server.backend not in SERVER_BACKENDS:
        raise ConfigError(
            f"server.backend: unknown backend {s.server.backend!r} "
            f"(one of {', '.join(SERVER_BACKENDS)})"
        )
    if s.database.threads < 1:
        raise ConfigError("database.threads: must be at least 1")
    if s.database.url and not s.database.url.startswith(("postgresql://", "postgres://")):
        # Not echoed back: it may hold a password.
        raise ConfigError("database.url: must be a postgresql:// URL (or empty for SQLite)")
    if s.events.fallback_poll_interval <= 0:
        raise ConfigError("events.fallback_poll_interval: must be positive")
    if s.limits.max_manifest_bytes < 4 * 1024 * 1024:
        raise ConfigError("limits.max_manifest_bytes: the spec requires at least 4194304")
    if not 1 <= s.limits.default_page_size <= s.limits.max_page_size:
        raise ConfigError("limits.default_page_size: must be between 1 and limits.max_page_size")
    if s.events.pull_buffer < 1:
        raise ConfigError("events.pull_buffer: must be at least 1")
    if s.events.feed_buffer < 1:
        raise ConfigError("events.feed_buffer: must be at least 1")
    if s.events.poll_interval <= 0 or s.events.heartbeat <= 0:
        raise ConfigError("events.poll_interval and events.heartbeat: must be positive")
    if s.log.level not in LOG_LEVELS:
        raise ConfigError(f"log.level: choose one of {', '.join(LOG_LEVELS)}")
    if s.log.format not in LOG_FORMATS:
        raise ConfigError(f"log.format: choose one of {', '.join(LOG_FORMATS)}")
    if "\0" in s.log.file or s.log.file.endswith(("/", ".")):
        raise ConfigError(f"log.file: {s.log.file!r} is not a file name")
    if s.events.webhook_lease_seconds <= 0:
        raise ConfigError("events.webhook_lease_seconds: must be positive")
    if s.server.public_url:
        url = urlsplit(s.server.public_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(f"server.public_url: {s.server.public_url!r} is not an http(s) URL")
    if s.storage.driver == "azure":
        validate_azure(s.storage.azure)
    _validate_metrics(s)
    _validate_tls(s)
    _validate_network_and_limits(s)
    _validate_webhooks(s.webhooks)
    validate_replication(s.replication)
    validate_scanning(s.scanning)
    validate_retention(s.retention)
    _validate_auth(s)
    _validate_token(s.auth.token)
    _validate_pruning(s)
    _validate_quotas(s)
    validate_upstreams(s.upstreams)
    _validate_scanner_adapter(s)


def _validate_scanner_adapter(s: Settings) -> None:
    adapter = s.scanning.adapter
    if not 1 <= adapter.report_ttl <= 7 * 86400:
        raise ConfigError("scanning.adapter.report_ttl: must be between 1 and 604800 seconds")
    if adapter.max_pending < 1:
        raise ConfigError("scanning.adapter.max_pending: must be at least 1")


# The dashboard's longest window (core/stats.py MAX_WINDOW, one day) rounded up to whole
# buckets of up to an hour, with its slack: pruning must leave at least that much.
DASHBOARD_DAYS = 2.0


def _validate_pruning(s: Settings) -> None:
    e = s.events
    for key in ("keep_pulls_days", "keep_days"):
        days = getattr(e, key)
        if days != 0 and not DASHBOARD_DAYS <= days <= 36500:
            raise ConfigError(
                f"events.{key}: must be 0 (keep forever) or {DASHBOARD_DAYS:g} to 36500 days:"
                " the dashboard shows up to the last day"
            )
    if not 0 <= e.prune_interval <= 7 * 86400:
        raise ConfigError("events.prune_interval: must be between 0 (off) and 604800 seconds")
    if not 1 <= e.prune_batch_size <= 100000:
        raise ConfigError("events.prune_batch_size: must be between 1 and 100000")


def _validate_quotas(s: Settings) -> None:
    for i, q in enumerate(s.quotas):
        key = f"quotas[{i}]"
        if bool(q.repositories) == bool(q.namespace):
            raise ConfigError(f"{key}: give either repositories (globs) or a namespace")
        if q.namespace and (
            q.namespace.startswith("/") or q.namespace.endswith("/") or "*" in q.namespace
        ):
            raise ConfigError(f"{key}.namespace: {q.namespace!r} is not a repository name prefix")
        if q.max_bytes < 1:
            raise ConfigError(f"{key}.max_bytes: must be at least 1 byte")
    validate_gc(s.gc)


def _validate_metrics(s: Settings) -> None:
    m = s.metrics
    if not m.path.startswith("/") or m.path.startswith("/v2") or "?" in m.path:
        raise ConfigError(f"metrics.path: {m.path!r} must start with / and not be under /v2")
    if m.path in ("/healthz", "/readyz", s.auth.token.path):
        raise ConfigError(f"metrics.path: {m.path!r} is taken by another endpoint")
    if not 0 <= m.inventory_cache <= 3600:
        raise ConfigError("metrics.inventory_cache: must be between 0 and 3600 seconds")
    if m.listen:
        _host, sep, port = m.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"metrics.listen: {m.listen!r} is not host:port")
        if int(port) == s.server.port:
            raise ConfigError("metrics.listen: must not use server.port")
