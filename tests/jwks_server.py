"""A real HTTPS server on loopback that serves a JWKS document, for the external-issuer
tests: it runs in a thread (``http.server`` with a TLS context), counts the requests and
serves whatever ``document`` holds at the time."""

from __future__ import annotations

import json
import ssl
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.serverthread import ServerThread
from tests.tokenkit import Issued


class JwksServer:
    def __init__(self, certificate: Issued, tmp: Path) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        cert_file, key_file = tmp / "jwks-server.pem", tmp / "jwks-server.key"
        cert_file.write_bytes(certificate.pem())
        key_file.write_bytes(certificate.key_pem())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = json.dumps(server.document).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ServerThread(Handler, context)
        self.url = f"https://127.0.0.1:{self._server.port}/jwks.json"

    def __enter__(self) -> JwksServer:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(None, None, None)
