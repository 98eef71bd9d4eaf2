"""A stand-in chain sandbox: GET /status, POST /deploy, GET /contracts."""

import hashlib
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
WARMUP = float(os.environ.get("SANDBOX_WARMUP", "0.3"))
CONTRACTS: dict[str, str] = {}


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/status":
            ready = time.monotonic() - STARTED >= WARMUP
            self._reply(200 if ready else 503, {"ready": ready})
        elif self.path == "/contracts":
            self._reply(200, CONTRACTS)
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/deploy":
            self._reply(404, {"error": "not found"})
            return
        data = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        contract_id = "c-" + hashlib.sha256(data["code"].encode()).hexdigest()[:16]
        CONTRACTS[data["name"]] = contract_id
        self._reply(200, {"contract_id": contract_id})


if os.environ.get("SANDBOX_FAIL"):
    print("sandbox refusing to start", file=sys.stderr)
    sys.exit(4)
ThreadingHTTPServer(("0.0.0.0", 3030), Handler).serve_forever()
