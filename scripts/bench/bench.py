#!/usr/bin/env python3
"""PaaSTech benchmark of issue #3, side by side with its baselines, in one run.

(a) `git push` transport: PaaSTech's SSH server vs OpenSSH's sshd + git-receive-pack.
(b) push-to-live of examples/static-hello and examples/python-hello (first deploy, redeploys).
(c) ingress requests/s and p99 vs nginx as a reverse proxy to the same backend, with wrk.
(d) a static site (1 KB index.html) served by PaaSTech's ingress vs nginx serving the same
    file, with wrk; the `serve-static` process alone is measured beside them.
(e) TLS vs nginx with the same ECDSA P-256 certificate, with h2load: HTTPS requests/s over
    kept-alive connections, new handshakes/s and HTTP/2 requests/s, proxied to the backend
    of (c) and for the static site of (d).
(f) `coldstart` (issue #18): the first request to a sleeping app (sent until answered) for
    the static, Python and Dockerfile examples on each runtime (process; Docker and Podman
    when their engine answers), beside the warm request time and the runtime's own start
    floor (`sh -c true`; a trivial busybox container), and the memory its web used before
    it slept (freed while asleep).

Everything listens on 127.0.0.1 only, every loop is bounded, and everything started here
is stopped at the end (also on Ctrl-C). Run through scripts/bench.sh, which builds the
release binary and installs the tools; see `--help` for knobs.
"""

import argparse
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

# Piku is the baseline the issue names for push-to-live, but it cannot be installed from
# the registries this benchmark may use: no Debian package, none on npm, and the `piku` on
# PyPI is an unrelated CircuitPython tool; Piku itself installs from its git repository.
# A ratio against a figure from another machine or day would not be a measurement, so
# none is printed.
PIKU_NOT_MEASURED = "Piku is not installable from Debian, PyPI or npm; the PyPI `piku` is another tool"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load():
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def run(cmd, cwd=None, env=None, check=True, capture=True):
    full_env = dict(os.environ, **GIT_ENV, **(env or {}))
    res = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=capture, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


class Processes:
    """Every long-running process this benchmark starts, stopped in reverse order."""

    def __init__(self):
        self.procs = []  # (name, Popen, stop signal, grace seconds)

    def start(self, name, cmd, log_path, sig=signal.SIGTERM, grace=15.0, env=None):
        out = open(log_path, "ab")
        # Its own process group, so stopping it also reaches the workers it forks.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            env=dict(os.environ, **(env or {})),
        )
        out.close()
        self.procs.append((name, proc, sig, grace))
        return proc

    def stop(self, proc):
        for entry in list(self.procs):
            if entry[1] is proc:
                self._stop(*entry)
                self.procs.remove(entry)

    @staticmethod
    def _stop(name, proc, sig, grace):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop in {grace}s: SIGKILL")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def stop_all(self):
        while self.procs:
            self._stop(*self.procs.pop())


# ---------------------------------------------------------------------------------------
# PaaSTech


class PaaSTech:
    def __init__(self, binary, work, procs, ingress_threads=None, tls=None, ingress_extra="", extra="", name="paastech"):
        self.binary = binary
        # More `[ingress]` keys, and more sections after it (a `[runtime]`).
        self.ingress_extra, self.extra = ingress_extra, extra
        self.ingress_threads = ingress_threads
        # (cert_file, key_file): the ingress also serves HTTPS on `https_port` with them.
        self.tls = tls
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.api_port, self.ssh_port, self.ingress_port = free_port(), free_port(), free_port()
        self.https_port = free_port() if tls else None
        self.procs = procs
        self.proc = None
        self.token = None

    def start(self):
        config = os.path.join(self.dir, "paastech.toml")
        with open(config, "w") as f:
            f.write(
                f'data_dir = "{self.dir}/data"\n\n'
                f'[api]\nlisten = "127.0.0.1:{self.api_port}"\n\n'
                f'[ssh]\nlisten = "127.0.0.1:{self.ssh_port}"\n\n'
                f'[ingress]\nlisten = "127.0.0.1:{self.ingress_port}"\ndomain = "localhost"\n'
                + (f"threads = {self.ingress_threads}\n" if self.ingress_threads else "")
                + self.ingress_extra
                + (f'https_listen = "127.0.0.1:{self.https_port}"\n\n'
                   f'[tls]\ncert_file = "{self.tls[0]}"\nkey_file = "{self.tls[1]}"\n' if self.tls else "")
                + self.extra
            )
        self.proc = self.procs.start(
            "paastech", [self.binary, "server", "--config", config], os.path.join(self.dir, "server.log"),
            grace=40.0, env={"PAASTECH_LOG": "info"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"paastech server exited:\n{self.log_tail()}")
            try:
                if self.api("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"paastech server not ready after 30s:\n{self.log_tail()}")

    def log_tail(self, n=40):
        try:
            with open(os.path.join(self.dir, "server.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def api(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/api/v1{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read().decode()
                return resp.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def developer(self, public_key):
        email, password = "bench@example.com", "correct horse battery"
        status, body = self.api("POST", "/auth/signup", {"email": email, "password": password})
        assert status == 201, f"signup: {status} {body}"
        status, body = self.api("POST", "/auth/login", {"email": email, "password": password})
        assert status == 200, f"login: {status} {body}"
        self.token = body["token"]
        status, body = self.api("POST", "/ssh-keys", {"name": "bench", "public_key": public_key})
        assert status == 201, f"ssh key: {status} {body}"

    def create_project(self, name):
        status, body = self.api("POST", "/projects", {"name": name})
        assert status == 201, f"create {name}: {status} {body}"
        # The plain-HTTP comparisons measure serving, not the redirect to HTTPS a project
        # gets by default once the ingress holds a certificate for its name.
        status, body = self.api("PATCH", f"/projects/{name}/https", {"redirect": False})
        assert status == 200, f"https policy of {name}: {status} {body}"
        return f"ssh://git@127.0.0.1:{self.ssh_port}/{name}.git"

    def get(self, project, path="/", timeout=5.0):
        """GET through the ingress: (status, body)."""
        return http_get(self.ingress_port, f"{project}.localhost:{self.ingress_port}", path, timeout)

    def stop(self):
        if self.proc:
            self.procs.stop(self.proc)
            self.proc = None


def http_get(port, host, path="/", timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# OpenSSH


class OpenSsh:
    """OpenSSH's sshd on a free loopback port, set up as a git server usually is: a dedicated
    user whose login shell is git-shell (root's shell here would read ~/.bashrc on every
    connection, which on this machine runs `pyenv init` and costs ~0.3 s a push)."""

    USER = "paastech-bench-git"

    def __init__(self, work, procs, client_pub):
        self.dir = os.path.join(work, "sshd")
        self.home = os.path.join(work, "sshd-home")
        self.remotes = os.path.join(self.home, "repos")
        os.makedirs(self.dir)
        os.makedirs(self.remotes)
        self.port = free_port()
        self.procs = procs
        self.client_pub = client_pub
        self.user_created = False

    def start(self):
        git_shell = shutil.which("git-shell")
        if not git_shell:
            raise RuntimeError("git-shell not found (it ships with git)")
        # A user left by an interrupted run is replaced, so its home is this run's.
        if run(["id", self.USER], check=False).returncode == 0:
            run(["userdel", self.USER])
        run(["useradd", "--system", "--no-create-home", "--home-dir", self.home, "--shell", git_shell, self.USER])
        self.user_created = True
        # useradd leaves the password "!" (locked), and without PAM sshd then refuses even
        # key logins; "*" means no password, not locked.
        run(["usermod", "-p", "*", self.USER])
        run(["chown", "-R", f"{self.USER}:", self.home])
        host_key = os.path.join(self.dir, "host_ed25519_key")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key])
        authorized = os.path.join(self.dir, "authorized_keys")
        with open(authorized, "w") as f:
            f.write(self.client_pub + "\n")
        os.chmod(authorized, 0o644)
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                f"PidFile {self.dir}/sshd.pid\nAuthorizedKeysFile {authorized}\nAllowUsers {self.USER}\n"
                "StrictModes no\nUsePAM no\nPermitRootLogin no\nPubkeyAuthentication yes\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\nPrintLastLog no\n"
                "AcceptEnv GIT_PROTOCOL\n"
            )
        # sshd's privilege separation directory; Debian creates it at boot, a container may not.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        run([sshd, "-t", "-f", config])
        self.proc = self.procs.start("sshd", [sshd, "-D", "-e", "-f", config], os.path.join(self.dir, "sshd.log"))
        wait_port(self.port)

    def remove_user(self):
        if self.user_created:
            run(["userdel", self.USER], check=False)
            self.user_created = False

    def new_remote(self, name):
        path = os.path.join(self.remotes, f"{name}.git")
        run(["git", "init", "-q", "--bare", path])
        run(["chown", "-R", f"{self.USER}:", path])
        return f"ssh://{self.USER}@127.0.0.1:{self.port}{path}"


# ---------------------------------------------------------------------------------------
# Repositories


def ssh_command(key):
    return (
        f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o LogLevel=ERROR -o BatchMode=yes"
    )


class Repo:
    def __init__(self, path, key):
        self.path = path
        self.env = {"GIT_SSH_COMMAND": ssh_command(key)}

    def git(self, *args, check=True):
        return run(["git", *args], cwd=self.path, env=self.env, check=check)

    def init(self):
        self.git("init", "-q", "-b", "main")
        self.commit("first commit")

    def commit(self, message):
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def push(self, url, refspec):
        """Times `git push URL REFSPEC`: (seconds, ok, output)."""
        started = time.perf_counter()
        res = run(["git", "push", "--porcelain", url, refspec], cwd=self.path, env=self.env, check=False)
        return time.perf_counter() - started, res.returncode == 0, res.stdout + res.stderr


def make_big_repo(path, key, megabytes, files):
    os.makedirs(path)
    per_file = megabytes * 1024 * 1024 // files
    for i in range(files):
        with open(os.path.join(path, f"blob-{i}.bin"), "wb") as f:
            f.write(os.urandom(per_file))
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("random, incompressible data for the push benchmark\n")
    repo = Repo(path, key)
    repo.init()
    # Packed, as a developer's repository mostly is: pack-objects then reuses the compressed
    # data instead of re-deflating 50 MB on every push, so the push measures the transport
    # and the server rather than the client's zlib.
    repo.git("repack", "-a", "-d", "-q")
    return repo


def make_small_repo(path, key):
    """Ten small files; one is index.html, so a push to main deploys a static site."""
    os.makedirs(path)
    with open(os.path.join(path, "index.html"), "w") as f:
        f.write("<!doctype html><title>small</title><p>ten-file bench repo</p>\n")
    for i in range(9):
        with open(os.path.join(path, f"file-{i}.txt"), "w") as f:
            f.write(f"small file {i}\n" + "lorem ipsum dolor sit amet\n" * (i + 1) * 20)
    repo = Repo(path, key)
    repo.init()
    return repo


def copy_example(name, dest, key):
    shutil.copytree(os.path.join(ROOT, "examples", name), dest)
    repo = Repo(dest, key)
    repo.init()
    return repo


# ---------------------------------------------------------------------------------------
# (a) push transport


def bench_push(paas, sshd, key, work, rounds, big_mb, results):
    log(f"(a) push transport: building a {big_mb} MB repo and a 10-file repo")
    big = make_big_repo(os.path.join(work, "repo-big"), key, big_mb, 5)
    small = make_small_repo(os.path.join(work, "repo-small"), key)
    size = run(["du", "-sk", os.path.join(big.path, ".git", "objects")]).stdout.split()[0]
    log(f"big repo objects: {int(size) / 1024:.1f} MiB")

    local_remotes = os.path.join(work, "local-remotes")
    os.makedirs(local_remotes)

    def local_remote(name):
        path = os.path.join(local_remotes, f"{name}.git")
        run(["git", "init", "-q", "--bare", path])
        return path

    for label, repo in (("big", big), ("small", small)):
        times = {"paastech": [], "openssh": [], "local": []}
        load_before = load()
        for r in range(rounds):
            la = load()
            # Rotate which goes first, so none always runs on a warmer cache.
            order = ("paastech", "openssh", "local")[r % 3:] + ("paastech", "openssh", "local")[: r % 3]
            for who in order:
                name = f"push-{label}-{r}"
                if who == "paastech":
                    url = paas.create_project(name)
                elif who == "openssh":
                    url = sshd.new_remote(name)
                else:
                    # git alone, no SSH: the floor both servers sit on.
                    url = local_remote(name)
                secs, ok, out = repo.push(url, "main:refs/heads/bench")
                if not ok:
                    raise RuntimeError(f"{who} push of the {label} repo failed:\n{out}\n{paas.log_tail()}")
                times[who].append(secs)
                log(f"push {label} round {r} {who}: {secs:.3f}s (load {la})")
        results["push"][label] = {**times, "load": f"{load_before} -> {load()}"}

    # A push to main also builds and deploys (here the small repo is a static site).
    url = paas.create_project("push-small-main")
    secs, ok, out = small.push(url, "main")
    results["push"]["small_main"] = {"secs": secs, "ok": ok, "load": load()}
    log(f"push small to main (build + deploy): {secs:.3f}s ok={ok}")
    if not ok:
        log(out)


# ---------------------------------------------------------------------------------------
# (b) push-to-live


class Poller(threading.Thread):
    """Polls the ingress every `interval` until `want` is in the body, recording when."""

    def __init__(self, paas, project, want, started, timeout, interval=0.01):
        super().__init__(daemon=True)
        self.paas, self.project, self.want, self.started = paas, project, want, started
        self.deadline = started + timeout
        self.interval = interval
        self.seen_at = None
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.is_set() and time.perf_counter() < self.deadline:
            try:
                status, body = self.paas.get(self.project, timeout=2.0)
                if status == 200 and self.want in body:
                    self.seen_at = time.perf_counter() - self.started
                    return
            except OSError:
                pass
            time.sleep(self.interval)


def push_to_live(paas, repo, url, project, want, timeout=120.0):
    """(seconds until `want` is served, seconds until git push returned, push ok)."""
    started = time.perf_counter()
    poller = Poller(paas, project, want, started, timeout)
    poller.start()
    res = run(["git", "push", "-q", url, "main"], cwd=repo.path, env=repo.env, check=False)
    pushed = time.perf_counter() - started
    if res.returncode != 0:
        poller.stop_flag.set()
        poller.join()
        raise RuntimeError(f"push of {project} failed:\n{res.stdout}{res.stderr}\n{paas.log_tail()}")
    poller.join(timeout=max(0.0, timeout - pushed) + 5)
    poller.stop_flag.set()
    if poller.seen_at is None:
        raise RuntimeError(f"{project}: {want!r} not served within {timeout}s\n{paas.log_tail()}")
    return poller.seen_at, pushed


def bench_live(paas, key, work, rounds, results):
    apps = {
        # project: (example, file to edit, first content, edit(text, n) -> text, content after edit n)
        "static-hello": (
            "static-hello",
            "index.html",
            "hello from static-hello",
            lambda text, n: re.sub(r"hello from [^<]*<", f"hello from redeploy-{n}<", text),
            lambda n: f"hello from redeploy-{n}",
        ),
        "python-hello": (
            "python-hello",
            "app.py",
            "hello from python-hello",
            lambda text, n: re.sub(r"from [a-z0-9-]+\"", f'from redeploy-{n}"', text),
            lambda n: f"hello from redeploy-{n}",
        ),
    }
    for project, (example, path, first, edit, after) in apps.items():
        log(f"(b) push-to-live: {project}")
        repo = copy_example(example, os.path.join(work, f"live-{project}"), key)
        url = paas.create_project(project)
        la = load()
        served, pushed = push_to_live(paas, repo, url, project, first)
        log(f"{project} first deploy: served after {served:.3f}s, push returned after {pushed:.3f}s (load {la})")
        entry = {"first": (served, pushed, la), "redeploys": []}
        for n in range(2, rounds + 2):
            file = os.path.join(repo.path, path)
            with open(file) as f:
                text = f.read()
            changed = edit(text, n)
            assert changed != text, f"the one-line change to {path} did not apply"
            with open(file, "w") as f:
                f.write(changed)
            repo.commit(f"redeploy {n}")
            la = load()
            served, pushed = push_to_live(paas, repo, url, project, after(n))
            log(f"{project} redeploy {n}: served after {served:.3f}s, push returned after {pushed:.3f}s (load {la})")
            entry["redeploys"].append((served, pushed, la))
        results["live"][project] = entry


# ---------------------------------------------------------------------------------------
# (f) cold starts of sleeping apps

# Runtime -> (server config after [ingress], the floor: a command that starts the runtime's
# smallest unit of work and ends, and whether its engine answers).
COLDSTART_RUNTIMES = {
    "process": ("", ["sh", "-c", "true"], ["true"]),
    "docker": ('[runtime]\ndriver = "docker"\n\n[build]\nbase_image = "paastech/python:bookworm"\n', ["docker", "run", "--rm", "paastech/busybox:latest", "true"],
               ["docker", "info", "--format", "{{.ServerVersion}}"]),
    "podman": ('[runtime]\ndriver = "podman"\n\n[build]\nbase_image = "localhost/paastech/python:bookworm"\n',
               ["podman", "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit",
                "nproc=1024:1024", "localhost/paastech/busybox:latest", "true"],
               ["podman", "--url", "unix:///run/podman/podman.sock", "version"]),
}
# The swarm of `scripts/setup/85-swarm.sh` (its manager's socket and the registry its nodes
# pull from), when its variables are set: a task is started on the swarm, the floor is a
# container started on the manager's engine.
if os.environ.get("PAASTECH_SWARM_SOCKET") and os.environ.get("PAASTECH_SWARM_REGISTRY"):
    _SWARM = "unix://" + os.environ["PAASTECH_SWARM_SOCKET"]
    COLDSTART_RUNTIMES["swarm"] = (
        '[runtime]\ndriver = "swarm"\nsocket = "%s"\nnamespace = "bench"\nstop_grace_secs = 3\n\n'
        '[registry]\nurl = "%s"\n\n[build]\nbase_image = "paastech/python:bookworm"\n' % (os.environ["PAASTECH_SWARM_SOCKET"], os.environ["PAASTECH_SWARM_REGISTRY"]),
        ["docker", "-H", _SWARM, "run", "--rm", "paastech/busybox:latest", "true"],
        ["docker", "-H", _SWARM, "info", "--format", "{{.Swarm.LocalNodeState}}"],
    )
else:
    COLDSTART_RUNTIMES["swarm"] = ("", [], ["false"])
# Which examples each runtime builds: all three everywhere but the Dockerfile one on
# processes. On containers the generated Dockerfiles start from the base image of
# `scripts/bench/python-image.sh` (Debian 12 minbase with python3, and busybox httpd for
# the static site), made and imported before the runs: no registry with one is reachable.
STATIC = ("static-hello", "hello from static-hello")
PYTHON = ("python-hello", "hello from python-hello")
DOCKERFILE = ("dockerfile-hello", "hello from dockerfile-hello")
COLDSTART_APPS = {
    "process": [STATIC, PYTHON],
    "docker": [STATIC, PYTHON, DOCKERFILE],
    "podman": [STATIC, PYTHON, DOCKERFILE],
    "swarm": [STATIC, PYTHON, DOCKERFILE],
}


def timed_get(paas, project, timeout=60.0):
    """(seconds from sending the request to the whole answer, status, body): a new connection."""
    began = time.perf_counter()
    status, body = paas.get(project, "/", timeout)
    return time.perf_counter() - began, status, body


def wait_asleep(paas, project, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = paas.api("GET", f"/projects/{project}/sleep")
        if status == 200 and body["asleep"]:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{project} did not fall asleep within {timeout}s\n{paas.log_tail()}")


def web_memory(paas, project):
    status, body = paas.api("GET", f"/projects/{project}/stats")
    if status != 200:
        return None
    used = [i.get("memory_bytes") for i in body["instances"] if i["process_type"] == "web"]
    return sum(u for u in used if u) if used and all(used) else None


def bench_coldstart(binary, procs, key, pub, work, rounds, results):
    # The container runtimes' base image with Python (and busybox httpd).
    run(["bash", os.path.join(os.path.dirname(os.path.abspath(__file__)), "python-image.sh"),
         os.path.join(work, "python-image")])
    for runtime, (extra, floor_cmd, ping) in COLDSTART_RUNTIMES.items():
        if runtime == "swarm" and not floor_cmd:
            log("(f) coldstart: no swarm (PAASTECH_SWARM_SOCKET): `source scripts/setup/85-swarm.sh` first")
            results["coldstart"][runtime] = {"skipped": "no swarm: source scripts/setup/85-swarm.sh first"}
            continue
        if run(ping, check=False).returncode != 0:
            log(f"(f) coldstart: the {runtime} engine does not answer; not measured")
            results["coldstart"][runtime] = {"skipped": f"{ping[0]} does not answer"}
            continue
        floors = []
        for _ in range(rounds):
            began = time.perf_counter()
            run(floor_cmd)
            floors.append(time.perf_counter() - began)
        # A second of the server's is a "minute" of idle time: the app sleeps 1 s after
        # its last request.
        paas = PaaSTech(binary, work, procs, ingress_extra="sleep_minute_secs = 1\nwake_timeout_secs = 60\n",
                        extra=extra, name=f"coldstart-{runtime}")
        paas.start()
        paas.developer(pub)
        entry = {"floor": floors, "apps": {}}
        for example, want in COLDSTART_APPS[runtime]:
            project = f"cold-{runtime[:3]}-{example.split('-')[0]}"
            repo = copy_example(example, os.path.join(work, f"cold-{runtime}-{example}"), key)
            url = paas.create_project(project)
            if runtime != "process" and example == "python-hello":
                # In a container the app must listen beyond its own loopback.
                status, body = paas.api("PATCH", f"/projects/{project}/env", {"HOST": "0.0.0.0"})
                assert status == 200, f"env of {project}: {status} {body}"
            push_to_live(paas, repo, url, project, want, timeout=600.0)
            warm = []
            for _ in range(max(rounds, 5)):
                took, status, body = timed_get(paas, project)
                assert status == 200 and want in body, f"{project} warm: {status} {body[:200]}"
                warm.append(took)
            status, body = paas.api("PUT", f"/projects/{project}/sleep", {"enabled": True, "after_minutes": 1})
            assert status == 200, f"sleep on {project}: {status} {body}"
            cold, memory = [], []
            for n in range(rounds):
                memory.append(web_memory(paas, project))
                wait_asleep(paas, project)
                # The sleeper stops the instances right after it records the sleep.
                time.sleep(0.5)
                took, status, body = timed_get(paas, project)
                assert status == 200 and want in body, f"{project} cold: {status} {body[:300]}\n{paas.log_tail()}"
                cold.append(took)
                log(f"(f) {runtime} {example} cold start {n + 1}: {took * 1000:.0f} ms (load {load()})")
            entry["apps"][example] = {"cold": cold, "warm": warm, "memory": memory}
        paas.stop()
        results["coldstart"][runtime] = entry


def print_coldstart(w, results):
    w("(f) cold start of a sleeping app: the first request after it slept, sent until answered (new connection),\n")
    w("    beside the warm request (new connection) and the runtime's start floor; medians; a shared machine: noisy\n")
    w("runtime  app               cold ms  warm ms  floor ms  cold/warm  cold/floor  web memory before sleep\n")
    for runtime, entry in results["coldstart"].items():
        if "skipped" in entry:
            w(f"{runtime:<8} not measured: {entry['skipped']}\n")
            continue
        floor = statistics.median(entry["floor"])
        for app, m in entry["apps"].items():
            cold, warm = statistics.median(m["cold"]), statistics.median(m["warm"])
            known = [b for b in m["memory"] if b]
            memory = f"{statistics.median(known) / (1024 * 1024):.1f} MiB" if known else "unknown"
            target = "  (target < 500 ms: " + ("met" if cold < 0.5 else "MISSED") + ")" if app == "python-hello" and runtime == "process" else ""
            w(f"{runtime:<8} {app:<16} {cold * 1000:8.0f} {warm * 1000:8.1f} {floor * 1000:9.1f} "
              f"{cold / warm:9.1f}x {cold / floor:10.1f}x  {memory}{target}\n")
            w(f"         rounds: cold {', '.join(f'{c * 1000:.0f}' for c in m['cold'])} ms\n")
    w("\n")


# ---------------------------------------------------------------------------------------
# (c) ingress vs nginx

BACKEND_CONF = """\
# The benchmark backend: nginx serving one small file (the same process behind both proxies).
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    # In the app's own directory: the app's user may not write to nginx's default
    # (/var/lib/nginx, made by the package's service only when it starts as root).
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location / {{ index index.html; }}
    }}
}}
"""

PROXY_CONF = """\
# nginx as a reverse proxy, configured sensibly: keepalive upstream connections, one worker
# per core, HTTP/1.1 upstream, the same forwarding headers PaaSTech's ingress sets.
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    upstream backend {{
        server {backend};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"""

BACKEND_RUN = """\
#!/bin/sh
# Procfile web process: nginx on $PORT serving www/ (nginx reads no env, so the port is
# written into its config here).
set -eu
dir=$(pwd)
sed -e "s|@PORT@|$PORT|" -e "s|@DIR@|$dir|" backend.conf.in > backend.conf
# Tells the benchmark where the backend is, for the nginx proxy in front of the same one.
echo "$PORT $$" > {port_file}.tmp && mv {port_file}.tmp {port_file}
exec {nginx} -p "$dir" -c "$dir/backend.conf" -g 'daemon off;'
"""


def parse_wrk(text):
    """(requests/s, p50 ms, p99 ms, errors) from `wrk --latency` output."""

    def ms(value):
        m = re.match(r"([\d.]+)(us|ms|s|m)", value)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
        return float(m.group(1)) * scale

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    return rps, p50, p99, errors, total


def machine_ticks():
    """(idle, all) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal
    return fields[3] + fields[4], sum(fields)


def cpu_seconds(pgid):
    """User + system CPU time of every process in the group `pgid` (all their threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces: split after its closing parenthesis.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def wrk(port, host, connections, seconds):
    threads = min(2, connections)
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency",
        "-H", f"Host: {host}", f"http://127.0.0.1:{port}/",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed: {res.stderr}")
    return parse_wrk(res.stdout)


def deploy_backend(paas, work, results):
    """The nginx backend of (c) and (e), deployed once as a PaaSTech app: (port, pgid)."""
    if "backend" in results:
        return results["backend"]
    log("deploying the nginx backend as a PaaSTech app")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    app = os.path.join(work, "backend-app")
    # The app runs as a user of its own (the process runtime's app uids): it writes its port
    # into a directory anyone may write to, not into the benchmark's own directory.
    drop = os.path.join(work, "backend-drop")
    os.makedirs(drop)
    os.chmod(drop, 0o1777)
    port_file = os.path.join(drop, "backend.port")
    os.makedirs(os.path.join(app, "www"))
    # A small page, typical of an API answer or a tiny HTML page.
    with open(os.path.join(app, "www", "index.html"), "w") as f:
        f.write("<!doctype html><title>bench</title><p>" + "x" * 512 + "</p>\n")
    with open(os.path.join(app, "backend.conf.in"), "w") as f:
        f.write(BACKEND_CONF.format(dir="@DIR@", port="@PORT@"))
    with open(os.path.join(app, "run-backend.sh"), "w") as f:
        f.write(BACKEND_RUN.format(nginx=nginx, port_file=port_file))
    with open(os.path.join(app, "Procfile"), "w") as f:
        f.write("web: sh run-backend.sh\n")
    repo = Repo(app, results["key"])
    repo.init()
    url = paas.create_project("bench-backend")
    secs, ok, out = repo.push(url, "main")
    if not ok:
        raise RuntimeError(f"deploying the backend failed:\n{out}\n{paas.log_tail()}")
    with open(port_file) as f:
        port_text, pid_text = f.read().split()
    backend_port = int(port_text)
    # The runtime made the backend's `sh -c` a process-group leader; nginx is in that group.
    with open(f"/proc/{int(pid_text)}/stat") as f:
        backend_pgid = int(f.read().rsplit(")", 1)[1].split()[2])
    results["backend"] = (backend_port, backend_pgid)
    return results["backend"]


def bench_ingress(paas, procs, work, rounds, seconds, conns, results):
    log("(c) ingress: vs nginx as a reverse proxy to the same backend")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    backend_port, backend_pgid = deploy_backend(paas, work, results)
    backend = f"127.0.0.1:{backend_port}"
    log(f"backend nginx at {backend}")

    proxy_dir = os.path.join(work, "nginx-proxy")
    os.makedirs(proxy_dir)
    proxy_port = free_port()
    conf = os.path.join(proxy_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(PROXY_CONF.format(dir=proxy_dir, port=proxy_port, backend=backend))
    run([nginx, "-t", "-q", "-p", proxy_dir, "-c", conf])
    proxy = procs.start(
        "nginx-proxy", [nginx, "-p", proxy_dir, "-c", conf, "-g", "daemon off;"],
        os.path.join(proxy_dir, "stderr.log"), sig=signal.SIGQUIT,
    )
    wait_port(proxy_port)

    host = f"bench-backend.localhost:{paas.ingress_port}"
    # Both proxies must answer exactly what the backend answers.
    direct = http_get(backend_port, host)
    for name, port in (("nginx", proxy_port), ("paastech", paas.ingress_port)):
        got = http_get(port, host)
        assert got == direct, f"{name} answers {got[0]} {got[1][:80]!r}, the backend {direct[0]}"

    targets = {"backend": backend_port, "nginx": proxy_port, "paastech": paas.ingress_port}
    # Whose CPU time a run costs: CPU per request is the figure least moved by other load.
    groups = {"backend": backend_pgid, "nginx": proxy.pid, "paastech": paas.proc.pid}
    out = {c: {t: [] for t in targets} for c in conns}
    for r in range(rounds):
        for c in conns:
            # Warm both proxies' upstream pools at this concurrency, unmeasured.
            for port in (proxy_port, paas.ingress_port):
                wrk(port, host, c, 1)
            order = ["backend", "nginx", "paastech"] if r % 2 == 0 else ["backend", "paastech", "nginx"]
            for t in order:
                la = load()
                cpu_before = cpu_seconds(groups[t])
                idle_before, all_before = machine_ticks()
                rps, p50, p99, errors, total = wrk(targets[t], host, c, seconds)
                us_per_req = (cpu_seconds(groups[t]) - cpu_before) / max(total, 1) * 1e6
                idle_after, all_after = machine_ticks()
                idle, ticks = idle_after - idle_before, max(all_after - all_before, 1)
                # Every CPU's time but idle, per request: wrk, the backend, the proxy, the kernel.
                machine_us = (ticks - idle) / os.sysconf("SC_CLK_TCK") / max(total, 1) * 1e6
                out[c][t].append({
                    "rps": rps, "p50": p50, "p99": p99, "errors": errors, "load": la, "cpu_us": us_per_req,
                    "machine_us": machine_us, "idle": idle / ticks,
                })
                log(f"wrk c={c} round {r} {t}: {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                    f"{us_per_req:.1f} CPU us/req, machine {machine_us:.1f} us/req, idle {idle / ticks:.1%}, "
                    f"errors {errors} (load {la})")
    results["ingress"] = out
    results["ingress_rounds"] = rounds
    procs.stop(proxy)


# ---------------------------------------------------------------------------------------
# (d) static site vs nginx serving the same directory

STATIC_CONF = """\
# nginx serving a directory, configured as one would for static files: one worker per core,
# sendfile, open_file_cache (its cache of open files and their metadata).
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    types {{ text/html html; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location / {{ index index.html; }}
    }}
}}
"""


def static_server_port(project):
    """The port of the `paastech internal serve-static` process of `project`'s live release
    (found in /proc: its argv names the release directory, its socket the port)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args[1:3] == [b"internal", b"serve-static"] and project.encode() in args[3]:
            pids.append(entry)
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                return int(fields[1].split(":")[1], 16)
    raise RuntimeError(f"no serve-static process found for {project}")


def deploy_static(paas, work, results):
    """The static site of (d) and (e), pushed once: (its page, a directory holding a copy of
    its files for nginx; PaaSTech's release directory is its own)."""
    if "static_site" in results:
        return results["static_site"]
    log("deploying a static site (1 KB index.html) as a PaaSTech app")
    app = os.path.join(work, "static-app")
    os.makedirs(app)
    page = "<!doctype html><title>bench</title><p>" + "x" * 1024 + "</p>\n"
    page = page[: 1024 - 5] + "</p>\n"
    with open(os.path.join(app, "index.html"), "w") as f:
        f.write(page)
    repo = Repo(app, results["key"])
    repo.init()
    url = paas.create_project("bench-static")
    secs, ok, out = repo.push(url, "main")
    if not ok:
        raise RuntimeError(f"deploying the static site failed:\n{out}\n{paas.log_tail()}")
    root = os.path.join(work, "static-copy")
    os.makedirs(root)
    shutil.copy(os.path.join(app, "index.html"), root)
    results["static_site"] = (page, root)
    return results["static_site"]


def bench_static(paas, procs, work, rounds, seconds, conns, results):
    log("(d) static: vs nginx serving the same file")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    page, root = deploy_static(paas, work, results)
    nginx_dir = os.path.join(work, "nginx-static")
    os.makedirs(nginx_dir)
    port = free_port()
    conf = os.path.join(nginx_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(STATIC_CONF.format(dir=nginx_dir, port=port, root=root))
    run([nginx, "-t", "-q", "-p", nginx_dir, "-c", conf])
    server = procs.start(
        "nginx-static", [nginx, "-p", nginx_dir, "-c", conf, "-g", "daemon off;"],
        os.path.join(nginx_dir, "stderr.log"), sig=signal.SIGQUIT,
    )
    wait_port(port)
    process_port = static_server_port("bench-static")

    host = f"bench-static.localhost:{paas.ingress_port}"
    want = (200, page)
    for name, p in (("nginx", port), ("paastech", paas.ingress_port), ("process", process_port)):
        got = http_get(p, host)
        assert got == want, f"{name} answers {got[0]} {got[1][:80]!r}"

    # `process`: the `serve-static` process alone, which the ingress proxied to before it
    # served static sites itself (the hop's cost is the difference).
    targets = {"nginx": port, "paastech": paas.ingress_port, "process": process_port}
    groups = {"nginx": server.pid, "paastech": paas.proc.pid, "process": None}
    out = {c: {t: [] for t in targets} for c in conns}
    for r in range(rounds):
        for c in conns:
            for p in (port, paas.ingress_port):
                wrk(p, host, c, 1)
            order = ["nginx", "paastech", "process"] if r % 2 == 0 else ["paastech", "nginx", "process"]
            for t in order:
                la = load()
                cpu_before = cpu_seconds(groups[t]) if groups[t] else 0.0
                rps, p50, p99, errors, total = wrk(targets[t], host, c, seconds)
                cpu = (cpu_seconds(groups[t]) - cpu_before) / max(total, 1) * 1e6 if groups[t] else float("nan")
                out[c][t].append({"rps": rps, "p50": p50, "p99": p99, "errors": errors, "load": la, "cpu_us": cpu})
                log(f"wrk c={c} round {r} static {t}: {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                    f"{cpu:.1f} CPU us/req, errors {errors} (load {la})")
    results["static"] = out
    results["static_rounds"] = rounds
    procs.stop(server)


# ---------------------------------------------------------------------------------------
# (e) TLS: HTTPS over kept-alive connections, new handshakes, HTTP/2, static over HTTPS

TLS_CONF = """\
# nginx terminating TLS with the same certificate as PaaSTech: a reverse proxy to the same
# backend (as in (c)) and a static server of the same file (as in (d)), HTTP/2 on both.
# Session resumption is configured as an operator would (a shared session cache; tickets
# on, nginx's default) and PaaSTech keeps its own in-memory cache: alike on both sides.
# h2load resumes no session, so every new connection is a full handshake on either.
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    http2_max_requests 1000000;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    types {{ text/html html; }}
    default_type application/octet-stream;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    upstream backend {{
        server {backend};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{proxy_port} ssl http2 backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
    server {{
        listen 127.0.0.1:{static_port} ssl http2 backlog=4096;
        sendfile on;
        tcp_nopush on;
        open_file_cache max=1000 inactive=60s;
        open_file_cache_valid 60s;
        root {root};
        location / {{ index index.html; }}
    }}
}}
"""


def make_certificate(directory):
    """A self-signed ECDSA P-256 certificate for `*.localhost` and the bench's app names,
    served by both PaaSTech (as the operator's wildcard, `[tls] cert_file`) and nginx."""
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
    run(["openssl", "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.localhost",
         "-addext", "subjectAltName=DNS:*.localhost,DNS:bench-backend.localhost,DNS:bench-static.localhost"])
    return cert, key


def parse_h2load(text):
    """(requests/s, finished seconds, requests done, errors, mean connect ms, mean time to
    1st byte ms) from h2load's summary."""
    m = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", text)
    if not m:
        raise RuntimeError(f"h2load printed no summary:\n{text}")
    secs = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    m2 = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored, (\d+) timeout", text)
    done = int(m2.group(3))
    errors = int(m2.group(5)) + int(m2.group(6)) + int(m2.group(7))
    # Every answer must be a 2xx: a 3xx, 4xx or 5xx counts as an error, as wrk's non-2xx.
    m3 = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    errors += int(m3.group(2)) + int(m3.group(3)) + int(m3.group(4))

    def mean_ms(label):
        m = re.search(label + r":\s+\S+\s+\S+\s+(\S+)", text)
        if not m:
            return float("nan")
        v = re.match(r"([\d.]+)(us|ms|s)", m.group(1))
        return float(v.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[v.group(2)] if v else float("nan")

    return float(m.group(3)), secs, done, errors, mean_ms("time for connect"), mean_ms("time to 1st byte")


def log_percentiles(path):
    """(p50, p99) in ms of the request times h2load wrote to its --log-file."""
    times = []
    with open(path) as f:
        for line in f:
            fields = line.split("\t")
            if len(fields) >= 3:
                times.append(int(fields[2]) / 1000.0)
    if not times:
        return float("nan"), float("nan")
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def h2load(port, host, clients, seconds, h1, streams, log_path):
    """Kept-alive connections for `seconds` (after a 1 s warm-up in which they connect):
    HTTP/1.1 over TLS when `h1`, else HTTP/2 with `streams` at once per connection. The
    URI names the app, so h2load sends it as SNI and :authority/Host; `--connect-to` sends
    the traffic to 127.0.0.1, since `*.localhost` names do not resolve here."""
    if os.path.exists(log_path):
        os.remove(log_path)
    cmd = ["h2load", "-t", str(min(2, clients)), "-c", str(clients), "-m", str(streams), "-D", str(seconds),
           "--warm-up-time", "1", "--connect-to", f"127.0.0.1:{port}", "--log-file", log_path]
    if h1:
        cmd.append("--h1")
    cmd.append(f"https://{host}/")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if res.returncode != 0:
        raise RuntimeError(f"h2load failed: {res.stdout}{res.stderr}")
    rps, _, done, errors, _, _ = parse_h2load(res.stdout)
    p50, p99 = log_percentiles(log_path)
    return rps, p50, p99, errors, done


def handshakes(port, host, batch, seconds, log_path):
    """New TLS connections per second: batches of `batch` connections opened together by
    h2load (HTTP/1.1, one request each, then closed; h2load never resumes a session, so
    each is a full handshake), repeated for `seconds`. The rate is all connections over the
    time h2load itself measured for its batches; p99 is the request time after the
    handshake (from the log), beside the mean connect (TCP + TLS) time."""
    total, secs, errors, connect, ttfb, reqs = 0, 0.0, 0, [], [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(log_path):
            os.remove(log_path)
        cmd = ["h2load", "--h1", "-t", "2", "-c", str(batch), "-n", str(batch), "--connect-to",
               f"127.0.0.1:{port}", "--log-file", log_path, f"https://{host}/"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"h2load failed: {res.stdout}{res.stderr}")
        _, s, done, e, c, t = parse_h2load(res.stdout)
        total, secs, errors = total + done, secs + s, errors + e
        connect.append(c)
        ttfb.append(t)
        with open(log_path) as f:
            reqs.extend(int(line.split("\t")[2]) / 1000.0 for line in f if line.count("\t") >= 2)
    reqs.sort()
    p50 = reqs[len(reqs) // 2] if reqs else float("nan")
    p99 = reqs[min(len(reqs) - 1, int(len(reqs) * 0.99))] if reqs else float("nan")
    return (total / secs if secs else 0.0, p50, p99, errors, total, statistics.mean(connect),
            statistics.mean(ttfb))


def bench_tls(paas, procs, work, rounds, seconds, conns, h2_clients, h2_streams, batch, results):
    log("(e) tls: HTTPS, handshakes and HTTP/2 vs nginx with the same certificate")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    backend_port, _ = deploy_backend(paas, work, results)
    page, root = deploy_static(paas, work, results)
    tls_dir = os.path.join(work, "nginx-tls")
    os.makedirs(tls_dir, exist_ok=True)
    proxy_port, static_port = free_port(), free_port()
    conf = os.path.join(tls_dir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(TLS_CONF.format(dir=tls_dir, proxy_port=proxy_port, static_port=static_port, root=root,
                                backend=f"127.0.0.1:{backend_port}", cert=paas.tls[0], key=paas.tls[1]))
    run([nginx, "-t", "-q", "-p", tls_dir, "-c", conf])
    server = procs.start(
        "nginx-tls", [nginx, "-p", tls_dir, "-c", conf, "-g", "daemon off;"],
        os.path.join(tls_dir, "stderr.log"), sig=signal.SIGQUIT,
    )
    wait_port(proxy_port)
    wait_port(static_port)

    ports = {
        "proxy": {"nginx": proxy_port, "paastech": paas.https_port},
        "static": {"nginx": static_port, "paastech": paas.https_port},
    }
    hosts = {"proxy": f"bench-backend.localhost:{paas.https_port}", "static": f"bench-static.localhost:{paas.https_port}"}
    # Both answer the same over HTTPS and HTTP/2 (curl resolves the app's name to 127.0.0.1
    # itself, so it sends it as SNI; nothing outside the bench changes).
    for app, want in (("proxy", None), ("static", page)):
        for who, port in ports[app].items():
            name = hosts[app].split(":")[0]
            for flag in ("--http1.1", "--http2"):
                res = run(["curl", "-sS", "-k", flag, "--resolve", f"{name}:{port}:127.0.0.1", "-o", "-",
                           "-w", "\n%{http_code} %{http_version}", f"https://{name}:{port}/"], check=False)
                body, _, status = res.stdout.rpartition("\n")
                version = "2" if flag == "--http2" else "1.1"
                assert status == f"200 {version}", f"{who} {app} {flag}: {status!r} {res.stderr}"
                if want is not None:
                    assert body == want, f"{who} {app} {flag} answers {body[:80]!r}"

    groups = {"nginx": server.pid, "paastech": paas.proc.pid}
    h2log = os.path.join(work, "h2load.log")
    cases = []  # (label, app, kind, clients)
    for app in ("proxy", "static"):
        cases += [(f"{app} https/1.1 c={c}", app, "h1", c) for c in conns]
        cases += [(f"{app} h2 c={c} m={h2_streams}", app, "h2", c) for c in h2_clients]
    cases.append((f"proxy handshakes c={batch}", "proxy", "handshake", batch))
    out = {label: {"nginx": [], "paastech": []} for label, _, _, _ in cases}
    for r in range(rounds):
        for label, app, kind, clients in cases:
            order = ["nginx", "paastech"] if r % 2 == 0 else ["paastech", "nginx"]
            for who in order:
                port, host = ports[app][who], hosts[app]
                la = load()
                cpu_before = cpu_seconds(groups[who])
                if kind == "handshake":
                    rps, p50, p99, errors, total, conn_ms, ttfb_ms = handshakes(port, host, clients, seconds, h2log)
                else:
                    rps, p50, p99, errors, total = h2load(port, host, clients, seconds, kind == "h1",
                                                          h2_streams if kind == "h2" else 1, h2log)
                    conn_ms = ttfb_ms = float("nan")
                cpu = (cpu_seconds(groups[who]) - cpu_before) / max(total, 1) * 1e6
                out[label][who].append({"rps": rps, "p50": p50, "p99": p99, "errors": errors, "load": la,
                                        "cpu_us": cpu, "connect_ms": conn_ms, "ttfb_ms": ttfb_ms})
                extra = f", connect {conn_ms:.2f} ms, 1st byte {ttfb_ms:.2f} ms" if kind == "handshake" else ""
                log(f"h2load {label} round {r} {who}: {rps:.0f}/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                    f"{cpu:.1f} CPU us/op{extra}, errors {errors} (load {la})")
    results["tls"] = out
    results["tls_rounds"] = rounds
    results["tls_h2_streams"] = h2_streams
    procs.stop(server)


def print_tls(w, results, targets):
    t = results["tls"]
    w(f"(e) TLS (same ECDSA P-256 certificate, TLS 1.3) vs nginx: h2load -t2, {results['wrk_seconds']} s per run "
      f"after a 1 s warm-up, {results['tls_rounds']} round(s); medians, ratios: median of the ratios within each "
      "round\n")
    w(f"{'case':<30}{'nginx /s':>10}{'PaaSTech /s':>12}{'ratio':>7}  {'nginx p99':>10}{'PaaSTech p99':>13}"
      f"{'ratio':>7}  {'CPU us/op N/P':>14}  {'errors N/P':>10}  verdict\n")
    for label, rows in t.items():
        n, p = median_of(rows, "nginx", "rps"), median_of(rows, "paastech", "rps")
        n99, p99 = median_of(rows, "nginx", "p99"), median_of(rows, "paastech", "p99")
        rps_ratio, p99_ratio = paired_ratio(rows, "rps"), paired_ratio(rows, "p99")
        errs = f"{sum(x['errors'] for x in rows['nginx'])}/{sum(x['errors'] for x in rows['paastech'])}"
        cpu = f"{median_of(rows, 'nginx', 'cpu_us'):.1f}/{median_of(rows, 'paastech', 'cpu_us'):.1f}"
        verdict = (f"rate {'met' if rps_ratio >= targets['tls'] else 'MISSED'}, "
                   f"p99 {'met' if p99_ratio <= 1.05 else 'MISSED'}")
        w(f"{label:<30}{n:>10.0f}{p:>12.0f}{rps_ratio:>6.2f}x  {n99:>8.2f}ms{p99:>11.2f}ms{p99_ratio:>6.2f}x  "
          f"{cpu:>14}  {errs:>10}  {verdict}\n")
        if "handshakes" in label:
            w(f"{'':<30}mean connect (TCP + TLS) N/P {median_of(rows, 'nginx', 'connect_ms'):.2f}/"
              f"{median_of(rows, 'paastech', 'connect_ms'):.2f} ms, mean time to 1st byte N/P "
              f"{median_of(rows, 'nginx', 'ttfb_ms'):.2f}/{median_of(rows, 'paastech', 'ttfb_ms'):.2f} ms\n")
        for who in ("nginx", "paastech"):
            runs = ", ".join(f"{x['rps']:.0f}/{x['p99']:.2f}ms@{x['load']}" for x in rows[who])
            w(f"{'':<30}{who} rounds (/s / p99 @load): {runs}\n")
    w(f"targets: PaaSTech >= {targets['tls']:.1f}x nginx's rate, p99 no worse (5% tolerance). https/1.1: "
      "requests/s over kept-alive connections; h2: HTTP/2 requests/s, m streams at once per connection; "
      "handshakes: new connections/s, each a full handshake and one request (batches of c connections "
      "opened together), p99 = request time after the handshake; CPU us/op: the server's own CPU time per "
      "request or connection\n")


def median_of(rows, who, key):
    """The median of `key` over the rounds of `who` (nginx, paastech, …) in one row."""
    return statistics.median(x[key] for x in rows[who])


def paired_ratio(rows, key):
    """PaaSTech's `key` over nginx's, the median of the ratios within each round: each round
    runs both back to back, so the ratio cancels a shared machine's drift between rounds."""
    return statistics.median(y[key] / x[key] for x, y in zip(rows["nginx"], rows["paastech"]))


def print_static(w, results, targets):
    st = results["static"]
    w("(d) static site (1 KB index.html) vs nginx serving the same file, wrk -t2, "
      f"{results['wrk_seconds']} s per run, {results['static_rounds']} round(s); rps and p99: medians; "
      "ratios: median of the ratios within each round\n")
    w(f"{'conns':>5}  {'nginx rps':>10}{'PaaSTech rps':>13}{'ratio':>7}  {'nginx p99':>10}{'PaaSTech p99':>13}"
      f"{'ratio':>7}  {'CPU us/req N/P':>15}  {'process rps':>12}  {'errors N/P':>10}  verdict\n")
    for c, t in st.items():
        def med(who, key):
            return median_of(t, who, key)

        def paired(key):
            return paired_ratio(t, key)

        n, p, proc = med("nginx", "rps"), med("paastech", "rps"), med("process", "rps")
        n99, p99 = med("nginx", "p99"), med("paastech", "p99")
        rps_ratio, p99_ratio = paired("rps"), paired("p99")
        errs = f"{sum(x['errors'] for x in t['nginx'])}/{sum(x['errors'] for x in t['paastech'])}"
        cpu = f"{med('nginx', 'cpu_us'):.1f}/{med('paastech', 'cpu_us'):.1f}"
        verdict = (f"rps {'met' if rps_ratio >= targets['static'] else 'MISSED'}, "
                   f"p99 {'met' if p99_ratio <= 1.05 else 'MISSED'}")
        w(f"{c:>5}  {n:>10.0f}{p:>13.0f}{rps_ratio:>6.2f}x  {n99:>8.2f}ms{p99:>11.2f}ms{p99_ratio:>6.2f}x  "
          f"{cpu:>15}  {proc:>12.0f}  {errs:>10}  {verdict}\n")
        for who in ("nginx", "paastech", "process"):
            runs = ", ".join(f"{x['rps']:.0f}/{x['p99']:.2f}ms@{x['load']}" for x in t[who])
            w(f"{'':>5}  {who} rounds (rps/p99@load): {runs}\n")
    w(f"targets: PaaSTech rps >= {targets['static']:.1f}x nginx's, p99 no worse (5% tolerance); "
      "process = the serve-static process alone, without the ingress\n")


# ---------------------------------------------------------------------------------------
# The table


def fmt_s(values):
    return f"{statistics.median(values):.3f}" if values else "-"


def print_table(results, targets):
    w = sys.stdout.write
    w("\n")
    w("PaaSTech benchmark (issue #3): all on 127.0.0.1, one machine, same run\n")
    w(f"host: {os.cpu_count()} CPUs; load at start {results['load_start']}, at end {load()}\n")
    w(f"(medians of {results['rounds']} rounds; every round listed after the median)\n\n")

    if results["push"]:
        print_push(w, results)
    if results["live"]:
        print_live(w, results, targets)
    if results.get("ingress"):
        print_ingress(w, results, targets)
    if results.get("static"):
        print_static(w, results, targets)
    if results.get("tls"):
        print_tls(w, results, targets)
    if results.get("coldstart"):
        print_coldstart(w, results)
    w("\n")


def print_push(w, results):
    w("(a) git push transport, to refs/heads/bench (no deploy)\n")
    w(f"{'repo':<22}{'PaaSTech s':>12}{'OpenSSH s':>12}{'ratio':>8}  {'target':<22}{'no-SSH s':>9}  rounds P / O\n")
    for label, title in (("big", f"{results['big_mb']} MB random, 5 files"), ("small", "10 small files")):
        d = results["push"].get(label)
        if not d:
            continue
        p, o = statistics.median(d["paastech"]), statistics.median(d["openssh"])
        verdict = "met" if p <= o * 1.05 else "MISSED"
        floor = statistics.median(d["local"])
        w(f"{title:<22}{p:>12.3f}{o:>12.3f}{p / o:>7.2f}x  {'<= OpenSSH: ' + verdict:<22}{floor:>9.3f}  "
          f"{' '.join(f'{x:.2f}' for x in d['paastech'])} / {' '.join(f'{x:.2f}' for x in d['openssh'])}"
          f"  (load {d['load']})\n")
    w("no-SSH = `git push /local/bare.git`: git's own cost, the floor of both\n")
    sm = results["push"].get("small_main")
    if sm:
        w(f"{'10 files to main':<22}{sm['secs']:>12.3f}{'-':>12}{'':>8}  "
          f"(builds + deploys a static site; ok={sm['ok']})\n")
    w("\n")


def print_live(w, results, targets):
    w("(b) push-to-live: from `git push` start until the new content is served by the ingress\n")
    w(f"{'app':<16}{'deploy':<12}{'served s':>10}{'push s':>9}  {'load':<11}{'target':<24}\n")
    for project, entry in results["live"].items():
        s, p, la = entry["first"]
        w(f"{project:<16}{'first':<12}{s:>10.3f}{p:>9.3f}  {la:<11}\n")
        for i, (s, p, la) in enumerate(entry["redeploys"]):
            target = ""
            if project == "python-hello":
                target = f"< {targets['redeploy']:.1f} s: {'met' if s < targets['redeploy'] else 'MISSED'}"
            w(f"{'':<16}{'redeploy ' + str(i + 2):<12}{s:>10.3f}{p:>9.3f}  {la:<11}{target}\n")
        served = [s for s, _, _ in entry["redeploys"]]
        if served:
            w(f"{'':<16}{'median':<12}{statistics.median(served):>10.3f}\n")
    w(f"Piku: not measured, so no ratio against it ({PIKU_NOT_MEASURED})\n")
    w("\n")


def print_ingress(w, results, targets):
    ing = results["ingress"]
    if ing:
        w("(c) ingress vs nginx reverse proxy, same nginx backend, wrk -t2, "
          f"{results['wrk_seconds']} s per run, {results['ingress_rounds']} round(s); rps and p99: medians; "
          "ratios: median of the ratios within each round\n")
        w(f"{'conns':>5}  {'backend rps':>12}{'nginx rps':>11}{'PaaSTech rps':>13}{'ratio':>7}  "
          f"{'nginx p99':>10}{'PaaSTech p99':>13}{'ratio':>7}  {'CPU us/req N/P':>15}  {'errors N/P':>10}  verdict\n")
        for c, t in ing.items():
            def med(who, key):
                return median_of(t, who, key)

            def paired(key):
                return paired_ratio(t, key)

            b, n, p = med("backend", "rps"), med("nginx", "rps"), med("paastech", "rps")
            n99, p99 = med("nginx", "p99"), med("paastech", "p99")
            rps_ratio, p99_ratio = paired("rps"), paired("p99")
            errs = f"{sum(x['errors'] for x in t['nginx'])}/{sum(x['errors'] for x in t['paastech'])}"
            cpu = f"{med('nginx', 'cpu_us'):.1f}/{med('paastech', 'cpu_us'):.1f}"
            ok_rps = rps_ratio >= targets["ingress"]
            ok_p99 = p99_ratio <= 1.05
            verdict = f"rps {'met' if ok_rps else 'MISSED'}, p99 {'met' if ok_p99 else 'MISSED'}"
            w(f"{c:>5}  {b:>12.0f}{n:>11.0f}{p:>13.0f}{rps_ratio:>6.2f}x  {n99:>8.2f}ms{p99:>11.2f}ms"
              f"{p99_ratio:>6.2f}x  {cpu:>15}  {errs:>10}  {verdict}\n")
            machine = f"{med('nginx', 'machine_us'):.1f}/{med('paastech', 'machine_us'):.1f}"
            idle = f"{med('nginx', 'idle'):.1%}/{med('paastech', 'idle'):.1%}"
            w(f"{'':>5}  whole machine: CPU us/req N/P {machine}, idle N/P {idle}\n")
            for who in ("nginx", "paastech"):
                runs = ", ".join(f"{x['rps']:.0f}/{x['p99']:.2f}ms/{x['cpu_us']:.1f}us@{x['load']}" for x in t[who])
                w(f"{'':>5}  {who} rounds (rps/p99/CPU per req@load): {runs}\n")
        w(f"targets: PaaSTech rps >= {targets['ingress']:.1f}x nginx's, p99 no worse (5% tolerance); "
          "CPU us/req = the proxy's own CPU time per request (all its processes and threads);\n"
          "whole machine = all CPU time but idle per request (wrk, backend, proxy, kernel): on a machine "
          "kept busy, rps ~ cores x (1 - idle) / that\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paastech", default=os.path.join(ROOT, "target", "release", "paastech"))
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each timed measurement")
    parser.add_argument("--big-mb", type=int, default=50, help="size of the random-data repository")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--ingress-rounds", type=int, default=5, help="rounds of the ingress comparison")
    parser.add_argument("--connections", default="8,64,256")
    parser.add_argument("--ingress-threads", type=int, help="the ingress's `threads` (default: the server's)")
    parser.add_argument("--h2-clients", default="8,64", help="HTTP/2 connections of (e)")
    parser.add_argument("--h2-streams", type=int, default=10, help="HTTP/2 streams at once per connection in (e)")
    parser.add_argument("--handshake-batch", type=int, default=256,
                        help="connections opened together per h2load batch in (e)'s handshake test")
    parser.add_argument("--only", default="push,live,ingress,static,tls",
                        help="which parts to run (also: coldstart)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 20 and 1 <= args.ingress_rounds <= 20 and 1 <= args.wrk_seconds <= 60
            and 1 <= args.big_mb <= 500 and 1 <= args.h2_streams <= 100 and 1 <= args.handshake_batch <= 2000):
        parser.error("rounds and ingress-rounds 1..20, wrk-seconds 1..60, big-mb 1..500, h2-streams 1..100, "
                     "handshake-batch 1..2000")
    only = set(args.only.split(","))
    conns = [int(c) for c in args.connections.split(",")]

    work = tempfile.mkdtemp(prefix="paastech-bench-")
    # The OpenSSH git user must reach its home inside.
    os.chmod(work, 0o755)
    procs = Processes()
    sshd = None

    def cleanup():
        procs.stop_all()
        if sshd:
            sshd.remove_user()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")

    atexit.register(cleanup)
    # SIGTERM/SIGINT: unwind through atexit so every process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results = {"push": {}, "live": {}, "coldstart": {}, "rounds": args.rounds, "big_mb": args.big_mb,
               "wrk_seconds": args.wrk_seconds, "load_start": load()}
    key = os.path.join(work, "client_key")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key])
    with open(key + ".pub") as f:
        pub = f.read().strip()
    results["key"] = key

    tls = make_certificate(os.path.join(work, "tls")) if "tls" in only else None
    # The cold starts run servers of their own, one per runtime.
    if "coldstart" in only:
        bench_coldstart(args.paastech, procs, key, pub, work, args.rounds, results)
    if only <= {"coldstart"}:
        print_table(results, {})
        return
    paas = PaaSTech(args.paastech, work, procs, args.ingress_threads, tls)
    paas.start()
    paas.developer(pub)
    log(f"paastech: api {paas.api_port}, ssh {paas.ssh_port}, ingress {paas.ingress_port}; load {load()}")

    if "push" in only:
        sshd = OpenSsh(work, procs, pub)
        sshd.start()
        log(f"sshd on 127.0.0.1:{sshd.port}")
        bench_push(paas, sshd, key, work, args.rounds, args.big_mb, results)
    if "live" in only:
        bench_live(paas, key, work, args.rounds, results)
    if "ingress" in only:
        bench_ingress(paas, procs, work, args.ingress_rounds, args.wrk_seconds, conns, results)
    if "static" in only:
        bench_static(paas, procs, work, args.ingress_rounds, args.wrk_seconds, conns, results)
    if "tls" in only:
        h2_clients = [int(c) for c in args.h2_clients.split(",")]
        bench_tls(paas, procs, work, args.ingress_rounds, args.wrk_seconds, conns, h2_clients, args.h2_streams,
                  args.handshake_batch, results)

    targets = {"redeploy": 1.0, "ingress": 1.1, "static": 1.0, "tls": 1.0}
    print_table(results, targets)
    if args.json:
        results.pop("key", None)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    paas.stop()


if __name__ == "__main__":
    main()
