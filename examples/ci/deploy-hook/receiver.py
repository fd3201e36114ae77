#!/usr/bin/env python3
"""A deploy hook for dockyard's webhooks (docs/ci.md): when a release tag is pushed, run
a deploy command. Python's standard library only; copy it anywhere.

    DEPLOY_HOOK_SECRET='the webhook secret' python3 receiver.py --port 8808 \\
        --registry registry.example.com --tag release \\
        --command 'kubectl set image deployment/app app="$DEPLOY_IMAGE"'

dockyard POSTs each event of the ``[[webhooks]]`` endpoint (webhooks.toml beside this
file: format "dockyard", push actions, manifest media types) here. The receiver

- answers 401 unless ``X-Dockyard-Signature`` is the HMAC-SHA256 of the exact body under
  the secret (docs/webhooks.md, "Verifying the signature");
- ignores (204) every event but a manifest push of ``--tag`` (in ``--repository``, when
  given): webhooks filter by repository, action and media type, not by tag;
- ignores an event id it has already taken (delivery is at least once: a retry after a
  lost answer, or a redelivery, must not deploy twice);
- answers 202 and runs ``--command`` with ``sh -c`` in a worker thread, one deploy at a
  time in arrival order, with DEPLOY_REPOSITORY, DEPLOY_TAG, DEPLOY_DIGEST and
  DEPLOY_IMAGE (``REGISTRY/REPOSITORY@DIGEST``: deploy by digest, never by the tag,
  which may move again) in its environment.

Serve it behind TLS (a reverse proxy) when it is reached over a network.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import queue
import subprocess
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20  # dockyard's events are a few hundred bytes
SEEN_IDS = 10_000  # event ids remembered against duplicates

log = logging.getLogger("deploy-hook")


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


class Deployer:
    """Runs the deploy command for each release, one at a time, each event id once."""

    def __init__(self, command: str, registry: str) -> None:
        self.command = command
        self.registry = registry
        self.jobs: queue.Queue[dict[str, str]] = queue.Queue()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        threading.Thread(target=self._work, name="deploy", daemon=True).start()

    def submit(self, event_id: str, target: dict[str, Any]) -> bool:
        """Queue a deploy; False when this event id was taken already."""
        with self._lock:
            if event_id in self._seen:
                return False
            self._seen[event_id] = None
            while len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
        repository, digest = target["repository"], target["digest"]
        self.jobs.put(
            {
                "DEPLOY_REPOSITORY": repository,
                "DEPLOY_TAG": target["tag"],
                "DEPLOY_DIGEST": digest,
                "DEPLOY_IMAGE": f"{self.registry}/{repository}@{digest}",
            }
        )
        return True

    def _work(self) -> None:
        while True:
            env = self.jobs.get()
            log.info("deploying %s", env["DEPLOY_IMAGE"])
            done = subprocess.run(["sh", "-c", self.command], env={**os.environ, **env})
            if done.returncode == 0:
                log.info("deployed %s", env["DEPLOY_IMAGE"])
            else:
                log.error("deploy of %s exited %d", env["DEPLOY_IMAGE"], done.returncode)
            self.jobs.task_done()


def handler(
    secret: bytes, tag: str, repository: str | None, deployer: Deployer
) -> type[BaseHTTPRequestHandler]:
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                return self._answer(400, "a JSON body of at most 1 MiB")
            body = self.rfile.read(length)
            if not signature_ok(secret, body, self.headers.get("X-Dockyard-Signature")):
                return self._answer(401, "bad or missing X-Dockyard-Signature")
            try:
                event = json.loads(body)
                action, target = event["action"], event["target"]
            except (ValueError, KeyError, TypeError):
                return self._answer(400, 'not a dockyard event (webhook format "dockyard")')
            wanted = (
                action == "push"
                and target.get("kind") == "manifest"
                and target.get("tag") == tag
                and repository in (None, target.get("repository"))
            )
            if not wanted:
                return self._answer(204, "")
            event_id = self.headers.get("X-Dockyard-Event-Id") or str(event.get("id"))
            if deployer.submit(event_id, target):
                return self._answer(202, f"deploying {target['repository']}@{target['digest']}")
            return self._answer(200, f"event {event_id} was taken already")

        def _answer(self, status: int, text: str) -> None:
            data = (text + "\n").encode() if text else b""
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Hook


def main() -> None:
    ap = argparse.ArgumentParser(description="Run a deploy command when a release tag is pushed.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8808)
    ap.add_argument("--tag", default="release", help="the release tag to deploy on")
    ap.add_argument("--repository", help="only this repository (default: any the hook gets)")
    ap.add_argument("--registry", required=True, help="HOST[:PORT] in DEPLOY_IMAGE")
    ap.add_argument("--command", required=True, help="run with sh -c; DEPLOY_* in its env")
    args = ap.parse_args()
    secret = os.environ.get("DEPLOY_HOOK_SECRET", "").encode()
    if not secret:
        ap.error("set DEPLOY_HOOK_SECRET to the webhook's secret")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    deployer = Deployer(args.command, args.registry)
    hook = handler(secret, args.tag, args.repository, deployer)
    server = ThreadingHTTPServer((args.host, args.port), hook)
    log.info("listening on %s:%d for pushes of :%s", args.host, server.server_port, args.tag)
    server.serve_forever()


if __name__ == "__main__":
    main()
