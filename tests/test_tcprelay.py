"""The test harness's cuttable TCP relay (tests/tcprelay.py), against a real HTTP server:
what goes through arrives, a cut ends open connections and refuses new ones, a heal lets
them through again."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from tests.serverthread import ServerThread
from tests.tcprelay import TcpRelay


class Pong(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"pong")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def get(relay: TcpRelay) -> httpx.Response:
    return httpx.get(f"http://{relay.address}/", timeout=5)


def test_relay_passes_cuts_and_heals() -> None:
    with ServerThread(Pong) as server, TcpRelay("127.0.0.1", server.port) as relay:
        assert get(relay).content == b"pong"
        held = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"pong"):
            answer += held.recv(4096)  # a kept-alive connection, open

        relay.cut()
        try:
            assert held.recv(4096) == b""  # ended by the cut
        except ConnectionResetError:
            pass
        finally:
            held.close()
        with pytest.raises(httpx.TransportError):
            get(relay)

        relay.heal()
        assert get(relay).content == b"pong"
