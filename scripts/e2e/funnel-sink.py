#!/usr/bin/env python3
"""funnel-sink.py - the HTTP side of the Funnel/Funk end-to-end test: a webhook and a function.

    funnel-sink.py --listen HOST:PORT --log FILE

Run by scripts/e2e/funnel.sh in its destination namespace. Every request is recorded as one JSON
line in FILE: {"path": "/webhook", "headers": {lower-case name: value}, "body": "<text>"}.

    POST /webhook    Funnel's webhook: answers 200 {} (what arrived is in FILE)
    POST /function   Funk's function URL: answers 200 and
                     {"function": "ok", "imsi": <X-Soracom-Imsi>, "received": <the body>}
    anything else    404

Python standard library only. Stops on SIGTERM or SIGINT.
"""

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1024 * 1024


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "arcd-e2e-funnel-sink"
    log_file = None
    log_lock = threading.Lock()

    def log_message(self, *_args):
        pass

    def answer(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)).decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.log_lock, open(self.log_file, "a", encoding="utf-8") as log:
            log.write(json.dumps({"path": self.path, "headers": headers, "body": body}) + "\n")
        if self.path == "/webhook":
            self.answer(200, {})
        elif self.path == "/function":
            try:
                received = json.loads(body)
            except ValueError:
                received = body
            self.answer(200, {"function": "ok", "imsi": headers.get("x-soracom-imsi"),
                              "received": received})
        else:
            self.answer(404, {"error": "no such path"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Sink.log_file = args.log
    server = ThreadingHTTPServer((host, int(port)), Sink)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
