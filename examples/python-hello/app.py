"""A tiny web app for PaaSTech: standard library only.

Serves on $PORT. `/` answers with $GREETING (default "hello") and $PAASTECH_VERSION when
set; every request is logged to stdout.
"""

import http.server
import os
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/":
            self.send_error(404)
            return
        greeting = os.environ.get("GREETING", "hello")
        version = os.environ.get("PAASTECH_VERSION")
        body = f"{greeting} from python-hello"
        if version:
            body += f" (version {version})"
        data = (body + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        # To stdout, flushed: the platform collects stdout line by line.
        print(f"{self.address_string()} {format % args}", flush=True)


def main():
    port = int(os.environ.get("PORT", "5000"))
    # Loopback unless told otherwise: on the process runtime apps share the host's network,
    # and only the ingress should reach them; in a container, HOST=0.0.0.0.
    host = os.environ.get("HOST", "127.0.0.1")
    server = http.server.ThreadingHTTPServer((host, port), Handler)
    print(f"python-hello listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
