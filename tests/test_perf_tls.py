"""Quick tests of the perf suite over TLS and HTTP/2 (``--tls``, ``--http2``): tiny
scenarios against a real dockyard serving HTTPS with a certificate made for the test.

They check that the TLS and HTTP/2 clients move exactly the bytes they say and that a
client asked for a protocol fails when the server does not choose it (ALPN) or when the
certificate does not verify. No Distribution is needed; speed is not asserted.
"""

from __future__ import annotations

import io
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from perf.data import MiB
from perf.h2client import H2Connection
from perf.httpclient import Connection, HTTPError
from perf.load import run_tasks
from perf.rate import build_h2_requests, run_h2
from perf.run import main as perf_main
from perf.run import probe, run_scenarios
from perf.scenarios import Params, Record, Target
from perf.servers import DiscardServer, Dockyard
from perf.tls import ClientTLS, ProtocolMismatch, ServerTLS, make_certificates
from perf.transport import main as transport_main

from tests.test_perf_quick import TINY as QUICK_TINY

# The quick smoke's tiny sizes (its storm fields are unused here).
TINY = QUICK_TINY


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> ServerTLS:
    return make_certificates(tmp_path_factory.mktemp("perf-tls"))


@pytest.fixture(scope="module")
def dockyard(certificates: ServerTLS) -> Iterator[Dockyard]:
    with Dockyard(workers=1, tls=certificates) as server:
        assert isinstance(server, Dockyard)
        yield server


@pytest.fixture(scope="module")
def discard(certificates: ServerTLS) -> Iterator[DiscardServer]:
    """HTTPS that offers http/1.1 only by ALPN: no HTTP/2."""
    with DiscardServer(tls=certificates) as server:
        assert isinstance(server, DiscardServer)
        yield server


def by_case(records: list[Record]) -> dict[str, Record]:
    return {f"{r.scenario}/{r.case}": r for r in records}


@pytest.mark.parametrize("http2", [False, True], ids=["tls-http1.1", "tls-http2"])
def test_scenarios_over_tls(dockyard: Dockyard, certificates: ServerTLS, http2: bool) -> None:
    tls = ClientTLS(certificates.ca, http2)
    target = Target("A", "dockyard", dockyard.url, [dockyard.pid], tls=tls)
    assert target.url.startswith("https://")
    assert probe(target).startswith("TLSv1.3 ")
    assert probe(target).endswith(f"ALPN {'h2' if http2 else 'http/1.1'}")
    with target.connection() as conn:
        assert isinstance(conn, H2Connection) is http2

    records = run_scenarios(
        ["blob-push", "blob-pull", "manifest-rps"],
        TINY,
        [target],
        repeats=1,
        log=io.StringIO(),
        settle=0,
    )
    got = by_case(records)
    for name, r in got.items():
        assert r.failures == 0, (name, r.info)
    for mode in ("mono", "chunked"):
        push = got[f"blob-push/{mode}"].figures
        assert push["ok"] == TINY.push_count
        assert push["sent_mib"] == pytest.approx(TINY.push_count * (1 * MiB + 17) / MiB)
        assert push["server_cpu_s"] > 0
    # POST + PUT per blob; POST + 5 PATCHes + PUT per chunked blob.
    assert got["blob-push/mono"].figures["requests"] == 2 * TINY.push_count
    assert got["blob-push/chunked"].figures["requests"] == 7 * TINY.push_count
    full = got["blob-pull/full"].figures
    assert full["received_mib"] == TINY.pull_count * TINY.pull_rounds * 2
    ranged = got["blob-pull/ranged"].figures
    assert ranged["ok"] == TINY.range_requests
    assert ranged["received_mib"] == pytest.approx(TINY.range_requests / 4)
    for case in ("head-tag-c4", "head-digest-c4", "get-tag-c4", "get-digest-c4"):
        rps = got[f"manifest-rps/{case}"]
        assert rps.figures["failed"] == 0 and rps.figures["ok"] > 0, rps.info
        assert rps.info["engine"] == ("py-h2" if http2 else "py")


def test_http2_fails_loudly_when_the_server_does_not_choose_it(
    discard: DiscardServer, certificates: ServerTLS
) -> None:
    tls = ClientTLS(certificates.ca, http2=True)
    target = Target("ceiling", "discard", discard.url, [discard.pid], tls=tls)
    with pytest.raises(ProtocolMismatch, match=r"asked for h2 by ALPN, the server chose nothing"):
        probe(target)
    with target.connection() as conn, pytest.raises(ProtocolMismatch):
        conn.request("GET", "/v2/")
    res = run_tasks("127.0.0.1", discard.port, [lambda c: c.request("GET", "/v2/")] * 3, 2, tls=tls)
    assert res.ok == 0 and res.failed == 3
    assert any("ProtocolMismatch" in e for e in res.errors)
    requests = build_h2_requests("127.0.0.1", discard.port, "HEAD", ["/v2/"], [])
    with pytest.raises(ProtocolMismatch):
        run_h2(
            "127.0.0.1", discard.port, requests, tls=tls, connections=2, duration=0.2,
            max_requests=10,
        )  # fmt: skip
    # The command line refuses to measure it (nothing is recorded).
    with pytest.raises(ProtocolMismatch):
        perf_main(
            ["manifest-rps", "--url", discard.url, "--http2", "--ca", str(certificates.ca),
             "--quick", "--no-ceiling"]
        )  # fmt: skip
    # Over HTTP/1.1 the same server is fine.
    http1 = Target("ceiling", "discard", discard.url, [discard.pid], tls=ClientTLS(certificates.ca))
    assert probe(http1).endswith("ALPN http/1.1")


def test_the_certificate_is_verified(dockyard: Dockyard, tmp_path: Path) -> None:
    other = make_certificates(tmp_path / "other")  # a CA that did not issue dockyard's
    for http2 in (False, True):
        target = Target("A", "dockyard", dockyard.url, tls=ClientTLS(other.ca, http2))
        with target.connection() as conn, pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/v2/")
    with Connection("127.0.0.1", dockyard.port, 5) as conn, pytest.raises(HTTPError):
        conn.request("GET", "/v2/")  # plain HTTP to an HTTPS-only port


def test_http2_through_the_command_line(
    dockyard: Dockyard, certificates: ServerTLS, tmp_path: Path
) -> None:
    out = tmp_path / "h2.jsonl"
    code = perf_main(
        ["manifest-rps", "blob-push", "--url", dockyard.url, "--pid", str(dockyard.pid),
         "--http2", "--ca", str(certificates.ca), "--quick", "--no-ceiling", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["transport"] == "over TLS, HTTP/2 (ALPN h2)"
    pushes = [x for x in lines[1:] if x["scenario"] == "blob-push"]
    assert {x["case"] for x in pushes} == {"mono", "chunked"}
    quick = Params.quick()
    for x in pushes:
        assert x["figures"]["failed"] == 0 and x["figures"]["ok"] == quick.push_count
        assert x["figures"]["sent_mib"] == quick.push_count * quick.push_size / MiB


def test_transport_comparison_runs() -> None:
    assert transport_main(["--quick", "--workers", "1"]) == 0
