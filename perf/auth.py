"""What access control costs per request: manifest HEAD rate with auth off, basic and bearer.

Three ``dockyard serve`` processes of the same build and worker count run at once, each on
its own temporary data directory: ``auth.mode = "none"``, ``"basic"`` (a users file made by
``dockyard users add``) and ``"token"`` (the built-in token service). Every HEAD of the
basic run carries the user's password, every HEAD of the bearer run a token fetched once
from the token service, so each request goes through verification (the credential cache
or the token's signature) and the access rules. Runs alternate between the three, and
the figures are medians over the repeats with ratios to "none" per repeat::

    python -m perf.auth --repeats 5               # prints, and appends to perf/RESULTS.md
    python -m perf.auth --repeats 1 --no-record   # a smoke run

Each server first serves ``WARM_UP`` seconds of HEADs that are not recorded: every
worker's first check of a credential (bcrypt for basic, the signature for bearer) is a
start-up cost. Later ones are not excluded: a basic server checks the password with bcrypt
again once its ``auth.cache_seconds`` (60) pass, within the run. Setup pushes through an
``[[access]]`` rule that lets anonymous callers push and pull ``perf/*`` (pushing is not
what is measured); the measured HEADs still carry credentials, which are always verified
when sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import statistics
import subprocess
import sys
from pathlib import Path

from perf.httpclient import Connection
from perf.modes import (
    HEAD_HEADERS,
    REPO,
    Results,
    alternated,
    common_args,
    head_load,
    machine,
    push_images,
    ratio_table,
    record,
    report,
)
from perf.servers import Dockyard

USER, PASSWORD = "perf", "perf-password"
MODES = ("none", "basic", "token")
WARM_UP = 1.0  # seconds of HEADs per server before the measured repeats


def write_config(root: Path, mode: str) -> Path:
    htpasswd = root / "htpasswd"
    subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "users", "add", USER, "--password-stdin",
         "--htpasswd", str(htpasswd)],
        input=PASSWORD.encode(), check=True, capture_output=True,
    )  # fmt: skip
    lines = [f'[auth]\nmode = "{mode}"\nhtpasswd = {json.dumps(str(htpasswd))}\n']
    if mode != "none":
        lines.append(
            '[[access]]\nusers = ["anonymous"]\nrepositories = ["perf/*"]\n'
            'actions = ["pull", "push"]\n'
            f'[[access]]\nusers = ["{USER}"]\nrepositories = ["*"]\nactions = ["*"]\n'
        )
    path = root / f"dockyard-{mode}.toml"
    path.write_text("\n".join(lines))
    return path


def credentials(port: int, mode: str) -> list[tuple[str, str]]:
    """The Authorization header every HEAD of ``mode`` carries (a token fetched now)."""
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    if mode == "none":
        return []
    if mode == "basic":
        return [("authorization", f"Basic {basic}")]
    with Connection("127.0.0.1", port) as conn:
        target = f"/auth/token?service=dockyard&scope=repository:{REPO}:pull"
        r = conn.request("GET", target, [("authorization", f"Basic {basic}")], keep_body=True)
        if r.status != 200:
            raise RuntimeError(f"token service answered {r.status}: {r.body!r}")
        return [("authorization", f"Bearer {json.loads(bytes(r.body))['token']}")]


def run(repeats: int, duration: float, connections: int, workers: int) -> Results:
    servers: dict[str, Dockyard] = {}
    results: Results = {m: [] for m in MODES}
    try:
        for mode in MODES:
            server = Dockyard(workers=workers)
            config = write_config(server.tmp, mode)
            server.settings["DOCKYARD_CONFIG"] = str(config)
            # Tokens must outlive the run (the default expiry is 5 minutes).
            server.settings["DOCKYARD_AUTH_TOKEN_EXPIRY"] = "3600"
            server.start()
            servers[mode] = server
            targets = push_images(server)
        headers = {m: [*HEAD_HEADERS, *credentials(servers[m].port, m)] for m in MODES}
        # Warm-up, not recorded: every worker's first credential check (a bcrypt of about
        # 0.25 s for basic, the signature for bearer) is start-up cost, not per request.
        for mode in MODES:
            head_load(servers[mode], targets, headers[mode], connections, WARM_UP)
        for repeat in range(repeats):
            for mode in alternated(MODES, repeat):
                figures = head_load(servers[mode], targets, headers[mode], connections, duration)
                results[mode].append(figures)
                report(repeat, mode, figures)
    finally:
        for server in servers.values():
            server.stop()
    return results


def table(results: Results) -> str:
    """Medians over the repeats. The rate ratio is the issue's figure; the CPU ratio (auth
    off's server CPU per request over this mode's, per repeat) is the steadier one on a
    shared machine, where other load moves the rate of each 5 s measurement."""

    def cpu_ratio(mine: list[dict[str, float]], base: list[dict[str, float]]) -> str:
        pairs = zip(mine, base, strict=True)
        key = "server_cpu_us_per_req"
        return f"{statistics.median(b[key] / max(a[key], 1e-9) for a, b in pairs):.3f}"

    return ratio_table(
        "auth", MODES, "none", results, [("CPU ratio none/auth (median)", cpu_ratio)]
    )


def main() -> int:
    args = common_args(__doc__.splitlines()[0]).parse_args()
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results = run(args.repeats, args.duration, args.connections, args.workers)
    text = table(results)
    print(text)
    failed = sum(int(r["failed"]) for rs in results.values() for r in rs)
    if args.record:
        setup = (
            f"Manifest HEAD by tag, {args.connections} connections, {args.duration:g} s per "
            f"measurement, dockyard --workers {args.workers} per server, three servers "
            f"alternated (none, basic, token, then reversed) after a {WARM_UP:g} s warm-up "
            "of each; every basic HEAD carries the password, every bearer HEAD a token."
        )
        record("perf.auth", started, m, setup, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
