"""Reports over HTTP who it runs as and what it can read: the isolation journey's probe.

GET /whoami -> JSON: uid, gid, groups, and CapEff, CapAmb, NoNewPrivs from /proc/self/status
GET /read?path=P -> "readable", or "denied: <reason>" (a directory is listed, a file read)
Anything else -> "ok" (the health check).
"""
import json
import os
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer


def whoami():
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "cap_eff": fields.get("CapEff"),
        "cap_amb": fields.get("CapAmb"),
        "no_new_privs": fields.get("NoNewPrivs"),
        "cwd": os.getcwd(),
    }


def read(path):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        return "readable"
    except OSError as err:
        return "denied: " + (err.strerror or str(err))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/whoami":
            body = json.dumps(whoami())
        elif url.path == "/read":
            body = read(urllib.parse.parse_qs(url.query)["path"][0])
        else:
            body = "ok"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
