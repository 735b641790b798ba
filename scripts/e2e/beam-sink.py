#!/usr/bin/env python3
"""beam-sink.py - an HTTP destination for SORACOM Beam that checks the signature itself.

    beam-sink.py --listen HOST:PORT --psk KEY --log FILE

Run by scripts/e2e/netns.sh inside the rendezvous namespace, where arcd's Beam forwards to it.
Every request is recorded as one JSON line in FILE:

    {"time": <UNIX ms>, "method": "POST", "path": "/in/x?y=1", "headers": {"x-soracom-imsi": ...},
     "body": "<text>" | null, "bodyBase64": "<when not UTF-8>" | null,
     "signature": {"present": true, "expected": "<hex>", "valid": true}}

(header names lower-case; a repeated header keeps its last value). The signature is checked as
a Beam destination must (SORACOM's X-Soracom-Signature, version 20151001):

    X-Soracom-Signature == hex(sha256(psk + "x-soracom-imsi=" + <X-Soracom-IMSI>
                                          + "x-soracom-timestamp=" + <X-Soracom-Timestamp>))

A request with a valid signature and X-Soracom-Signature-Version 20151001 gets 200 and
{"sink": "ok", "verified": true, "imsi": ...}; any other gets 401 and {"sink": "bad signature",
...}, so the device calling Beam sees whether the destination accepted it. Python standard
library only. Stops on SIGTERM or SIGINT.
"""

import argparse
import base64
import hashlib
import hmac
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIGNATURE_VERSION = "20151001"
MAX_BODY = 4 * 1024 * 1024


def expected_signature(psk, imsi, timestamp):
    text = psk + "x-soracom-imsi=" + imsi + "x-soracom-timestamp=" + timestamp
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "arcd-e2e-beam-sink"
    psk = ""
    log_file = None
    log_lock = threading.Lock()

    def log_message(self, fmt, *args):  # the JSON log is the record; stderr gets one line each
        sys.stderr.write("beam-sink: %s %s\n" % (self.address_string(), fmt % args))

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length > 0 else b""

    def handle_any(self):
        try:
            body = self.read_body()
        except ValueError as e:
            self.answer(400, {"sink": str(e)})
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        imsi = headers.get("x-soracom-imsi", "")
        timestamp = headers.get("x-soracom-timestamp", "")
        given = headers.get("x-soracom-signature", "")
        expected = expected_signature(self.psk, imsi, timestamp)
        valid = (
            bool(given)
            and bool(imsi)
            and bool(timestamp)
            and headers.get("x-soracom-signature-version") == SIGNATURE_VERSION
            and hmac.compare_digest(given.lower(), expected)
        )
        try:
            text, b64 = body.decode("utf-8"), None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(body).decode("ascii")
        record = {
            "time": int(time.time() * 1000),
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": text,
            "bodyBase64": b64,
            "signature": {"present": bool(given), "expected": expected, "valid": valid},
        }
        with self.log_lock:
            self.log_file.write(json.dumps(record, sort_keys=True) + "\n")
            self.log_file.flush()
        if valid:
            self.answer(200, {"sink": "ok", "verified": True, "imsi": imsi})
        else:
            self.answer(401, {"sink": "bad signature", "verified": False, "imsi": imsi})

    def answer(self, status, payload):
        data = (json.dumps(payload, sort_keys=True) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Beam-Sink", "arcd-e2e")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--psk", required=True, help="the Beam pre-shared key")
    parser.add_argument("--log", required=True, help="JSON lines file, appended to")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    Sink.psk = args.psk
    Sink.log_file = open(args.log, "a", encoding="utf-8")
    server = ThreadingHTTPServer((host, int(port)), Sink)
    server.daemon_threads = True

    def stop(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write("beam-sink: listening on %s\n" % args.listen)
    sys.stderr.flush()
    server.serve_forever()
    server.server_close()
    Sink.log_file.close()


if __name__ == "__main__":
    main()
