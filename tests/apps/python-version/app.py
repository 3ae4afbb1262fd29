"""Answers with the interpreter it runs on (its version and path), and whether it can
import `six` (installed only when requirements.txt asks): what the language journeys check."""

import http.server
import os
import sys

try:
    import six

    SIX = f"six {six.__version__}"
except ImportError:
    SIX = "no six"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "%d.%d.%d %s %s" % (*sys.version_info[:3], sys.executable, SIX)
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
