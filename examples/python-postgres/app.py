"""A PaaSTech example that keeps data in a PostgreSQL add-on, through $DATABASE_URL.

Standard library only: it talks to the database with `psql` (Debian's postgresql-client),
passing values as psql variables quoted by psql itself (`:'text'`), never spliced into SQL.

  GET /notes          every note, one per line
  GET /add?text=...   stores a note, then answers it
"""

import http.server
import os
import subprocess
import urllib.parse


def psql(sql, **variables):
    argv = ["psql", os.environ["DATABASE_URL"], "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    # From stdin: psql substitutes :'name' there, not in -c.
    done = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return done.stdout


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            # The platform's health check: the app is up, with or without its database.
            self.answer(200, "python-postgres: GET /notes, GET /add?text=...\n")
            return
        if "DATABASE_URL" not in os.environ:
            self.answer(503, "no database: create one with `paastech addons create postgres`\n")
            return
        try:
            if url.path == "/notes":
                body = psql("SELECT text FROM notes ORDER BY id;")
            elif url.path == "/add":
                text = urllib.parse.parse_qs(url.query).get("text", [""])[0]
                psql("INSERT INTO notes (text) VALUES (:'text');", text=text)
                body = text + "\n"
            else:
                self.send_error(404)
                return
        except Exception as err:  # the error reaches the client and the log
            self.answer(500, f"database error: {err}\n")
            return
        self.answer(200, body)

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        print(f"{self.address_string()} {format % args}", flush=True)


def main():
    # The table is made by the release step (migrate.py), before this starts. Without a
    # database the app still starts (and says so), so that the add-on can be detached.
    if "DATABASE_URL" not in os.environ:
        print("no DATABASE_URL: create a database with `paastech addons create postgres`", flush=True)
    port = int(os.environ.get("PORT", "5000"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"python-postgres listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
