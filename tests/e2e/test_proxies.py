"""dockyard behind real nginx and haproxy (Debian's), configured with the snippets of
docs/security.md: TLS at the proxy, skopeo pushing and pulling through it, the forwarded
client address used for the access log, network lists and rate limits, and a client's
own X-Forwarded-For ignored. Clients bind other loopback addresses (127.0.0.2 and up) so
that each test has a client address of its own."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import serving
from tests.e2e.logread import access_log, field, logged_request
from tests.e2e.test_tls import skopeo
from tests.imagegen import OCILayout, build_image, make_layer
from tests.pki import ServerFiles, cert_dir, server_files
from tests.serverproc import DockyardServer, free_port
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).parents[2] / "docs" / "security.md"


def documented(name: str) -> str:
    """The configuration snippet marked ``<!-- tested: name -->`` in docs/security.md."""
    text = DOCS.read_text()
    match = re.search(rf"<!-- tested: {name} -->\n```\w*\n(.*?)```", text, re.DOTALL)
    assert match, f"no tested {name} snippet in {DOCS.name}"
    return match[1]


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not in the documented snippet"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def dockyard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-proxied")
    env = {
        "DOCKYARD_SERVER_TRUSTED_PROXIES": "127.0.0.1",
        "DOCKYARD_NETWORK_PUSH_DENY": "127.0.0.3",
        "DOCKYARD_RATE_LIMITS_PULL_RATE": "0.5",
        "DOCKYARD_RATE_LIMITS_PULL_BURST": "60",
        "DOCKYARD_LOG_ACCESS": "true",
    }
    yield from serving(DockyardServer(root / "data", env=env))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServerFiles:
    return server_files(tmp_path_factory.mktemp("proxy-certs"))


class Proxy:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path) -> None:
        self.name = name
        self.port = port
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with httpx.Client(verify=False) as client:  # only: is it listening yet
                    client.get(f"{self.url}/healthz", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start:\n{self.output()}")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_nginx(directory: Path, certs: ServerFiles, dockyard: DockyardServer) -> Proxy:
    path = require_tool("nginx")
    port = free_port()
    site = substitute(
        documented("nginx"),
        {
            "listen 443 ssl": f"listen 127.0.0.1:{port} ssl",
            "/etc/ssl/registry/fullchain.pem": str(certs.cert),
            "/etc/ssl/registry/privkey.pem": str(certs.key),
            "127.0.0.1:5000": dockyard.host,
        },
    )
    # What a distribution's nginx.conf has around the site; files in the test directory,
    # one foreground process.
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = directory / "nginx.conf"
    conf.write_text(
        f"daemon off;\nmaster_process off;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\nevents {{}}\n"
        f"http {{\n    access_log {directory / 'access.log'};\n{temp}\n{site}\n}}\n"
    )
    return Proxy(
        "nginx", [path, "-c", str(conf), "-p", str(directory)], port, directory / "out.log"
    )


def start_haproxy(directory: Path, certs: ServerFiles, dockyard: DockyardServer) -> Proxy:
    path = require_tool("haproxy")
    port = free_port()
    conf = directory / "haproxy.cfg"
    conf.write_text(
        substitute(
            documented("haproxy"),
            {
                "bind :443": f"bind 127.0.0.1:{port}",
                "/etc/haproxy/registry.pem": str(certs.combined),
                "127.0.0.1:5000": dockyard.host,
            },
        )
    )
    return Proxy("haproxy", [path, "-db", "-f", str(conf)], port, directory / "out.log")


@dataclass
class Proxied:
    proxy: Proxy
    certs: ServerFiles
    dockyard: DockyardServer
    client_base: int  # the last byte of this proxy's client addresses: 127.0.0.<n>

    def client(self, address: str) -> httpx.Client:
        transport = httpx.HTTPTransport(
            local_address=address, verify=self.certs.client_context(), http2=True
        )
        return httpx.Client(base_url=self.proxy.url, transport=transport)


@pytest.fixture(scope="module", params=["nginx", "haproxy"])
def proxied(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    certs: ServerFiles,
    dockyard: DockyardServer,
) -> Iterator[Proxied]:
    directory = tmp_path_factory.mktemp(request.param)
    start = start_nginx if request.param == "nginx" else start_haproxy
    proxy = start(directory, certs, dockyard)
    try:
        yield Proxied(proxy, certs, dockyard, 10 if request.param == "nginx" else 20)
    finally:
        proxy.stop()


def test_skopeo_push_and_pull_through_the_proxy(proxied: Proxied, tmp_path: Path) -> None:
    name = proxied.proxy.name
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image("v1", build_image([make_layer(800), make_layer(801)]))
    certs = cert_dir(tmp_path / "certs", proxied.certs)
    target = f"docker://{proxied.proxy.host}/proxied/{name}:v1"
    pushed = skopeo("copy", "--dest-cert-dir", str(certs), layout.ref("v1"), target)
    assert pushed.returncode == 0, pushed.stderr + proxied.proxy.output()
    pulled = skopeo("copy", "--src-cert-dir", str(certs), target, f"dir:{tmp_path / 'out'}")
    assert pulled.returncode == 0, pulled.stderr + proxied.proxy.output()
    assert (tmp_path / "out" / "manifest.json").read_bytes() == image.manifest.data
    for layer in image.layers:
        blob = tmp_path / "out" / layer.digest.removeprefix("sha256:")
        assert blob.read_bytes() == layer.blob.data


def test_forwarded_address_is_the_client_and_spoofing_is_ignored(proxied: Proxied) -> None:
    address = f"127.0.0.{proxied.client_base + 2}"
    request_id = f"forwarded-{proxied.proxy.name}"
    with proxied.client(address) as client:
        r = client.get(
            "/v2/", headers={"x-request-id": request_id, "x-forwarded-for": "192.0.2.66"}
        )
        assert r.status_code == 200 and r.http_version == "HTTP/2"
    assert field(logged_request(proxied.dockyard, request_id), "client.ip") == address


def test_network_deny_list_uses_the_forwarded_address(proxied: Proxied) -> None:
    repo = f"/v2/net-{proxied.proxy.name}/a/blobs/uploads/"
    with proxied.client("127.0.0.3") as denied:
        r = denied.post(repo, headers={"x-forwarded-for": f"127.0.0.{proxied.client_base}"})
        assert r.status_code == 403, r.text
        assert r.json()["errors"][0]["code"] == "DENIED"
    with proxied.client(f"127.0.0.{proxied.client_base + 3}") as allowed:
        assert allowed.post(repo).status_code == 202


def test_rate_limit_answers_429_with_retry_after(proxied: Proxied) -> None:
    limited = f"127.0.0.{proxied.client_base + 4}"
    with proxied.client(limited) as client:
        codes = [client.get("/v2/_catalog").status_code for _ in range(60)]
        assert codes == [200] * 60
        r = client.get("/v2/_catalog")
        assert r.status_code == 429, r.text
        assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert 1 <= int(r.headers["retry-after"]) <= 2
    # Another client address has a bucket of its own.
    with proxied.client(f"127.0.0.{proxied.client_base + 5}") as other:
        assert other.get("/v2/_catalog").status_code == 200


def test_dockyard_direct_429_from_a_real_server(dockyard: DockyardServer) -> None:
    """The same limit without a proxy: the peer address is the client."""
    with httpx.Client(
        base_url=dockyard.url, transport=httpx.HTTPTransport(local_address="127.0.0.40")
    ) as client:
        statuses = [client.get("/v2/_catalog").status_code for _ in range(61)]
    assert statuses[:60] == [200] * 60 and statuses[60] == 429
    deadline = time.monotonic() + 5
    while True:  # the access log line is written just after the answer is sent
        entries = [e for e in access_log(dockyard) if field(e, "client.ip") == "127.0.0.40"]
        if len(entries) == 61 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(entries) == 61
    assert field(entries[-1], "http.response.status_code") == 429
