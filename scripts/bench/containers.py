#!/usr/bin/env python3
"""PaaSTech benchmark of issues #4 and #13: push-to-live of examples/dockerfile-hello on each
container engine, beside the floor (`docker run` / `podman run` of the same image until it
answers HTTP; on Swarm, `docker service create` of it), and on Swarm the time from a node's
loss until no request fails.

For every engine (Docker, Podman) a PaaSTech server runs with `[runtime] driver = ENGINE` on
free loopback ports and a temporary data directory. Each round, on a new project:

  1. first deploy: `git push` of the example, timed from the push's start until the ingress
     (Host: NAME.localhost) serves the new page; the push's `remote:` lines are timestamped as
     they arrive, which splits the time into transport, the engine's build, start, health and
     switch;
  2. the floor: `ENGINE run -d -p 127.0.0.1:PORT:5000 -e PORT=5000 IMAGE` of the image just
     deployed, polled until it answers HTTP (and the same with the flags the driver adds, to
     tell their cost from the platform's);
  3. redeploy after a one-line change, timed the same way, and the floor again.

"Build time aside" is the total minus the engine's build (from the `Building image` line to
the `Built` line). The ratio is that over the floor; the issue's target is under 1.5x.

Swarm (`--engines swarm`): the two-node swarm of scripts/setup/85-swarm.sh, the server's
runtime `swarm` on the manager, builds pushed to the registry the nodes pull from; its floor
is `docker service create --detach` of the image with a host-mode port on the manager, polled
at the manager's address until it answers. `--node-loss` then deploys the example with 4
replicas (over both nodes), requests it through the ingress in a loop, stops node 2's engine
(`85-swarm.sh stop-node 2`) and reports the time from the loss until the last failed request,
how many failed, and when all 4 replicas answered from the manager; node 2 is started again.

Everything listens on 127.0.0.1 or on the swarm's own namespaces (10.231.0.0/24, made by
85-swarm.sh), every loop is bounded, and every server, container and image
started here is removed at the end (also on Ctrl-C). Run through scripts/bench-containers.sh.
"""

import argparse
import atexit
import json
import os
import re
import selectors
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
EXAMPLE = os.path.join(ROOT, "examples", "dockerfile-hello")
CGI = os.path.join("www", "cgi-bin", "index.cgi")
TARGET = 1.5

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}

SWARM_SETUP = os.path.join(ROOT, "scripts", "setup", "85-swarm.sh")
SWARM_SOCKET = os.environ.get("PAASTECH_SWARM_SOCKET", "/tmp/paastech-swarm/1/docker.sock")
SWARM_REGISTRY = os.environ.get("PAASTECH_SWARM_REGISTRY", "10.231.0.1:5000")
# The manager's address (85-swarm.sh): the swarm floor's task is put there.
SWARM_MANAGER = "10.231.0.11"

ENGINES = {
    "docker": {
        "cli": ["docker"],
        "setup": "scripts/setup/20-docker.sh",
        "image": lambda project, version: f"paastech/{project}:v{version}",
        "rm": ["rm", "-f"],
        "run": [],
        # What the driver gives every container (drivers/docker/src/runtime.rs): the floor
        # with these tells their cost from the platform's own.
        "driver_flags": [
            "--init", "--cap-drop", "ALL", "--cap-add", "CHOWN", "--cap-add", "SETUID", "--cap-add", "SETGID",
            "--security-opt", "no-new-privileges", "--memory", "512m", "--memory-swap", "512m", "--cpus", "1",
            "--pids-limit", "512", "--restart", "on-failure:5", "--log-driver", "json-file",
            "--log-opt", "max-size=10m", "--log-opt", "max-file=2",
        ],
    },
    "podman": {
        "cli": ["podman"],
        "setup": "scripts/setup/30-podman.sh",
        "image": lambda project, version: f"localhost/paastech/{project}:v{version}",
        # Without --time 0 a forced removal still waits 10 s for the polite stop.
        "rm": ["rm", "-f", "--time", "0"],
        # crun fails on this cgroup setup, and Podman's default ulimits exceed the host's: the
        # driver sets both on every container (drivers/podman/src/runtime.rs).
        "run": ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"],
        "driver_flags": [
            "--init", "--cap-drop", "ALL", "--cap-add", "CHOWN,SETUID,SETGID",
            "--security-opt", "no-new-privileges", "--memory", "512m", "--memory-swap", "512m", "--cpus", "1",
            "--pids-limit", "512", "--restart", "on-failure:5", "--log-driver", "k8s-file",
            "--log-opt", "max-size=10mb",
        ],
    },
    "swarm": {
        "cli": ["docker", "-H", f"unix://{SWARM_SOCKET}"],
        "setup": "scripts/setup/85-swarm.sh",
        "image": lambda project, version: f"{SWARM_REGISTRY}/paastech/{project}:v{version}",
        "rm": ["service", "rm"],
        "run": [],
        # What the driver gives every service (drivers/swarm/src/runtime.rs).
        "driver_flags": [
            "--cap-drop", "ALL", "--cap-add", "CHOWN", "--cap-add", "SETUID", "--cap-add", "SETGID",
            "--limit-memory", "512m", "--limit-cpu", "1", "--limit-pids", "512",
            "--restart-condition", "on-failure", "--restart-max-attempts", "5", "--log-driver", "json-file",
            "--log-opt", "max-size=10m", "--log-opt", "max-file=2", "--update-order", "start-first",
        ],
        "server": lambda pid: (
            f'[runtime]\ndriver = "swarm"\nsocket = "{SWARM_SOCKET}"\nnamespace = "bench-{pid}"\n'
            f'stop_grace_secs = 3\n\n[registry]\nurl = "{SWARM_REGISTRY}"\n'
        ),
    },
}

# The push output lines the timeline is cut at (core/src/orchestrator.rs and the builders).
MARKS = {
    "received": re.compile(r"-----> Building \S+ v\d+ from "),
    "building": re.compile(r"-----> Building image "),
    "built": re.compile(r"-----> Built \S+ in ([0-9.]+)s"),
    "starting": re.compile(r"-----> Starting v\d+"),
    "waiting": re.compile(r"-----> Waiting for web\.1 to answer HTTP"),
    "deployed": re.compile(r"-----> Deployed "),
}


def log(msg):
    print(f"[bench-containers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load():
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, cwd=None, env=None, check=True, timeout=120):
    full_env = dict(os.environ, **GIT_ENV, **(env or {}))
    res = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def poll_http(port, host, want, interval, deadline, stop=None, max_open=64, attempt_timeout=5.0, ip="127.0.0.1"):
    """GETs / on `ip`:`port` (loopback unless told) every `interval` seconds until an answer satisfies `want`
    (None: any HTTP status line; else a 200 whose body contains `want`); returns the
    `time.perf_counter()` of that answer, or None at `deadline` (or when `stop` is set).

    A new attempt starts every interval even while earlier ones wait: a port published by an
    engine's proxy accepts connections before the container's network is up, and such a
    connection then hangs for about a second (the proxy's SYN to the container is retried
    after 1 s) while a later one would be answered at once. Polling one attempt at a time
    measured `docker run` about 0.7 s slower than it is."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    want_bytes = want.encode() if want is not None else None
    sel = selectors.DefaultSelector()
    conns = {}  # socket -> [started, sent, received bytes]

    def close(sock):
        sel.unregister(sock)
        conns.pop(sock, None)
        sock.close()

    def satisfied(buf, complete):
        if want_bytes is None:
            return buf.startswith(b"HTTP/") and b"\r\n" in buf
        if not complete:
            return False
        head, _, body = buf.partition(b"\r\n\r\n")
        return head.startswith(b"HTTP/1.1 200") and want_bytes in body

    next_at = time.perf_counter()
    try:
        while True:
            now = time.perf_counter()
            if now >= deadline or (stop is not None and stop.is_set()):
                return None
            if now >= next_at:
                next_at = now + interval
                if len(conns) >= max_open:
                    close(min(conns, key=lambda c: conns[c][0]))
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex((ip, port))
                conns[sock] = [now, False, b""]
                sel.register(sock, selectors.EVENT_WRITE)
            for key, _ in sel.select(max(0.0, min(next_at, deadline) - time.perf_counter())):
                sock = key.fileobj
                state = conns[sock]
                if not state[1]:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        close(sock)  # refused: nothing listens yet
                        continue
                    try:
                        sock.send(request)
                    except OSError:
                        close(sock)
                        continue
                    state[1] = True
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                    state[2] = b""  # reset: not an answer
                if data:
                    state[2] += data
                if satisfied(state[2], not data):
                    return time.perf_counter()
                if not data:
                    close(sock)
            for sock in [c for c, st in conns.items() if time.perf_counter() - st[0] > attempt_timeout]:
                close(sock)
    finally:
        for sock in list(conns):
            close(sock)
        sel.close()


class Processes:
    """The servers this benchmark starts, stopped in reverse order."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, log_path, env=None):
        out = open(log_path, "ab")
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            env=dict(os.environ, **(env or {})),
        )
        out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc, grace=30.0):
        if proc in self.procs:
            self.procs.remove(proc)
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            log(f"server {proc.pid} did not stop in {grace}s: SIGKILL")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def stop_all(self):
        while self.procs:
            self.stop(self.procs[-1])


class Engine:
    """An engine's CLI, and everything the benchmark made with it (removed by `cleanup`)."""

    def __init__(self, name):
        self.name = name
        self.spec = ENGINES[name]
        self.cli = self.spec["cli"]
        self.projects = []
        self.floor_label = f"paastech.bench-containers={os.getpid()}"

    def answers(self):
        try:
            return run([*self.cli, "info", "--format", "{{.Host.OS}}" if self.name == "podman" else "{{.ServerVersion}}"],
                       check=False, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ensure(self):
        if self.answers():
            return
        log(f"{self.name} does not answer: running {self.spec['setup']}")
        subprocess.run(["bash", os.path.join(ROOT, self.spec["setup"])], check=True, timeout=600)
        if not self.answers():
            raise RuntimeError(f"the {self.name} engine does not answer after {self.spec['setup']}")

    def image(self, project, version):
        return self.spec["image"](project, version)

    def remove_containers(self, label):
        # On Swarm, services: their tasks' containers go with them.
        listing = ["service", "ls", "-q"] if self.name == "swarm" else ["ps", "-aq"]
        for _ in range(3):
            ids = run([*self.cli, *listing, "--filter", f"label={label}"], check=False).stdout.split()
            if not ids:
                return
            run([*self.cli, *self.spec["rm"], *ids], check=False, timeout=120)

    def cleanup(self):
        self.remove_containers(self.floor_label)
        for project in self.projects:
            self.remove_containers(f"paastech.project={project}")
            prefix = self.image(project, 0).rsplit(":", 1)[0]
            images = run([*self.cli, "images", "-q", prefix], check=False).stdout.split()
            if images:
                run([*self.cli, "rmi", "-f", *sorted(set(images))], check=False, timeout=120)
        self.projects.clear()

    def floor(self, image, interval, flags=()):
        """`ENGINE run -d` of `image` until it answers HTTP on its published port: seconds."""
        if self.name == "swarm":
            return self.service_floor(image, interval, flags)
        port = free_port()
        name = f"paastech-bench-floor-{os.getpid()}-{port}"
        cmd = [*self.cli, "run", "-d", "--name", name, "--label", self.floor_label, *self.spec["run"], *flags,
               "-p", f"127.0.0.1:{port}:5000", "-e", "PORT=5000", image]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        # Polled once the command returns (the container is started by then, as a user's
        # `ENGINE run -d; curl` sees it). Connecting to Docker's published port while the
        # container's network is still being set up makes every connection hang until the
        # proxy's retry, about 1.1 s after `docker run` starts instead of 0.4 s: polling
        # during the command would make the floor slower than it is.
        at = poll_http(port, f"127.0.0.1:{port}", None, interval, started + 60) if proc.returncode == 0 else None
        answered = at - started if at is not None else None
        run([*self.cli, *self.spec["rm"], name], check=False)
        if answered is None:
            raise RuntimeError(f"{' '.join(cmd)} never answered HTTP (exit {proc.returncode}): {out}{err}")
        return answered

    def service_floor(self, image, interval, flags):
        """`docker service create --detach` of `image` on the manager, with a host-mode port,
        until it answers HTTP at the manager's address: seconds. (The platform's services
        take an engine-chosen port and are read back from the task list; the floor knows
        its port and node beforehand, the least a swarm deploy can cost.)"""
        port = free_port()
        name = f"paastech-bench-floor-{os.getpid()}-{port}"
        cmd = [*self.cli, "service", "create", "--detach", "--name", name, "--label", self.floor_label,
               "--constraint", "node.role==manager", "--endpoint-mode", "dnsrr",
               "--publish", f"mode=host,published={port},target=5000", "-e", "PORT=5000", *flags, image]
        started = time.perf_counter()
        res = run(cmd, check=False, timeout=60)
        at = None
        if res.returncode == 0:
            at = poll_http(port, f"{SWARM_MANAGER}:{port}", None, interval, started + 120, ip=SWARM_MANAGER)
        answered = at - started if at is not None else None
        run([*self.cli, "service", "rm", name], check=False)
        if answered is None:
            raise RuntimeError(f"{' '.join(cmd)} never answered HTTP (exit {res.returncode}): {res.stdout}{res.stderr}")
        return answered


class Server:
    """A `paastech server` with the engine as its runtime, on free loopback ports."""

    def __init__(self, binary, work, engine, procs, name=None):
        self.binary = binary
        self.dir = os.path.join(work, f"server-{name or engine}")
        os.makedirs(self.dir)
        self.engine = engine
        self.api_port, self.ssh_port, self.ingress_port = free_port(), free_port(), free_port()
        self.procs = procs
        self.proc = None
        self.token = None

    @property
    def log_path(self):
        return os.path.join(self.dir, "server.log")

    def start(self):
        config = os.path.join(self.dir, "paastech.toml")
        with open(config, "w") as f:
            f.write(
                f'data_dir = "{self.dir}/data"\n\n'
                f'[api]\nlisten = "127.0.0.1:{self.api_port}"\n\n'
                f'[ssh]\nlisten = "127.0.0.1:{self.ssh_port}"\n\n'
                f'[ingress]\nlisten = "127.0.0.1:{self.ingress_port}"\ndomain = "localhost"\n\n'
                + ENGINES[self.engine].get("server", lambda _: f'[runtime]\ndriver = "{self.engine}"\n')(os.getpid())
            )
        self.proc = self.procs.start([self.binary, "server", "--config", config], self.log_path,
                                     env={"PAASTECH_LOG": "info"})
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

    def stop(self):
        if self.proc:
            self.procs.stop(self.proc)
            self.proc = None

    def log_tail(self, n=40):
        try:
            with open(self.log_path) as f:
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
            with urllib.request.urlopen(req, timeout=60) as resp:
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
        return f"ssh://git@127.0.0.1:{self.ssh_port}/{name}.git"


class Repo:
    def __init__(self, path, key):
        self.path = path
        self.env = {
            "GIT_SSH_COMMAND": f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
                               "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes",
        }

    def git(self, *args):
        return run(["git", *args], cwd=self.path, env=self.env)

    def commit(self, message):
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)


def timed_push(repo, ingress_port, project, want, interval, timeout=300.0):
    """`git push paastech main` while a poller GETs the project through the ingress every
    `interval` until the body contains `want`. Returns the timeline, in seconds from the
    push's start: each marked push line's arrival, `served`, and `exit`."""
    host = f"{project}.localhost:{ingress_port}"
    marks = {}
    lines = []
    served = {}
    stop = threading.Event()
    started = time.perf_counter()

    def poll():
        at = poll_http(ingress_port, host, want, interval, started + timeout, stop)
        if at is not None:
            served["at"] = at - started

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    proc = subprocess.Popen(
        ["git", "push", "paastech", "main"], cwd=repo.path, env=dict(os.environ, **GIT_ENV, **repo.env),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    partial = b""
    # Each line is stamped when it arrives: `remote:` lines stream as the server writes them.
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        now = time.perf_counter() - started
        if not chunk:
            break
        partial += chunk
        *done, partial = re.split(rb"[\r\n]", partial)
        for raw in done:
            line = raw.decode(errors="replace")
            if not line.strip():
                continue
            lines.append((now, line))
            for mark, pattern in MARKS.items():
                m = pattern.search(line)
                if m and mark not in marks:
                    marks[mark] = now
                    if mark == "built":
                        marks["built_reported"] = float(m.group(1))
    code = proc.wait(timeout=timeout)
    marks["exit"] = time.perf_counter() - started
    poller.join(timeout=max(1.0, timeout - marks["exit"]))
    stop.set()
    output = "\n".join(f"{t:7.3f} {line}" for t, line in lines)
    if code != 0:
        raise RuntimeError(f"git push failed ({code}):\n{output}")
    if "at" not in served:
        raise RuntimeError(f"the ingress never served {want!r} for {project}:\n{output}")
    marks["served"] = served["at"]
    missing = [m for m in ("received", "building", "built", "starting", "waiting") if m not in marks]
    if missing:
        raise RuntimeError(f"push output lacks the {missing} lines:\n{output}")
    return marks, output


def bench_engine(binary, name, work, procs, rounds, interval, results, verbose):
    engine = Engine(name)
    engine.ensure()
    server = Server(binary, work, name, procs)
    server.start()
    try:
        key = os.path.join(work, f"key-{name}")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key])
        with open(key + ".pub") as f:
            server.developer(f.read().strip())
        out = results.setdefault(name, {"first": [], "redeploy": [], "floor": [], "floor_flags": [], "load": []})
        for r in range(rounds):
            project = f"bc{name[0]}{os.getpid() % 100000}r{r}"
            engine.projects.append(project)
            url = server.create_project(project)
            path = os.path.join(work, f"repo-{project}")
            shutil.copytree(EXAMPLE, path)
            repo = Repo(path, key)
            repo.git("init", "-q", "-b", "main")
            repo.git("remote", "add", "paastech", url)
            repo.commit("first commit")

            la = load()
            marks, output = timed_push(repo, server.ingress_port, project,
                                       "hello from dockerfile-hello (version 1)", interval)
            out["first"].append(marks)
            if verbose:
                log(f"{name} round {r} first push:\n{output}")
            log(f"{name} round {r} first deploy: live {marks['served']:.3f}s, build "
                f"{marks['built'] - marks['building']:.3f}s, push returned {marks['exit']:.3f}s (load {la})")

            # Alternate which floor goes first, so neither always runs right after a deploy.
            floors = [("floor", ()), ("floor_flags", engine.spec["driver_flags"])]
            if r % 2:
                floors.reverse()
            for key_name, flags in floors:
                secs = engine.floor(engine.image(project, 1), interval, flags)
                out[key_name].append(secs)
                log(f"{name} round {r} {key_name}: {secs:.3f}s")

            with open(os.path.join(path, CGI)) as f:
                cgi = f.read()
            with open(os.path.join(path, CGI), "w") as f:
                f.write(cgi.replace("from dockerfile-hello", f"from round {r}"))
            repo.commit("one-line change")
            la = load()
            marks, output = timed_push(repo, server.ingress_port, project, f"hello from round {r} (version 2)",
                                       interval)
            out["redeploy"].append(marks)
            if verbose:
                log(f"{name} round {r} redeploy push:\n{output}")
            log(f"{name} round {r} redeploy: live {marks['served']:.3f}s, build "
                f"{marks['built'] - marks['building']:.3f}s, push returned {marks['exit']:.3f}s (load {la})")
            for key_name, flags in reversed(floors):
                secs = engine.floor(engine.image(project, 2), interval, flags)
                out[key_name].append(secs)
                log(f"{name} round {r} {key_name}: {secs:.3f}s")
            out["load"].append(la)
            # The project's containers and images go now, so rounds do not pile them up.
            server.api("DELETE", f"/projects/{project}")
            engine.cleanup()
    finally:
        server.stop()
        shutil.copy(server.log_path, os.path.join(work, f"server-{name}.log"))
        engine.cleanup()


def get_once(port, host, timeout=2.0):
    """One GET / through the ingress: whether it answered 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def node_loss(binary, work, procs, interval, watch_secs, results):
    """Swarm: 4 replicas over both nodes, a request loop through the ingress, node 2's
    engine stopped; the time from the loss until the last failed request."""
    engine = Engine("swarm")
    engine.ensure()
    server = Server(binary, work, "swarm", procs, name="swarm-loss")
    server.start()
    project = f"bnl{os.getpid() % 100000}"
    engine.projects.append(project)
    stopped = False
    try:
        key = os.path.join(work, "key-loss")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key])
        with open(key + ".pub") as f:
            server.developer(f.read().strip())
        url = server.create_project(project)
        path = os.path.join(work, f"repo-{project}")
        shutil.copytree(EXAMPLE, path)
        repo = Repo(path, key)
        repo.git("init", "-q", "-b", "main")
        repo.git("remote", "add", "paastech", url)
        repo.commit("first commit")
        timed_push(repo, server.ingress_port, project, "hello from dockerfile-hello (version 1)", interval)
        status, body = server.api("PUT", f"/projects/{project}/scale", {"web": 4})
        assert status == 200, f"scale: {status} {body}"

        def on_manager():
            status, nodes = server.api("GET", "/nodes")
            assert status == 200, f"nodes: {status} {nodes}"
            per_role = {}
            for node in nodes:
                running = [i for i in node["instances"] if i["project"] == project and i["state"] == "running"]
                per_role[node["role"]] = per_role.get(node["role"], 0) + len(running)
            return per_role

        spread = on_manager()
        log(f"node loss: 4 replicas, per node role {spread}")
        host = f"{project}.localhost:{server.ingress_port}"
        seen = []
        stop = threading.Event()

        def loop():
            deadline = time.perf_counter() + watch_secs + 30
            while not stop.is_set() and time.perf_counter() < deadline:
                seen.append((time.perf_counter(), get_once(server.ingress_port, host)))
                time.sleep(interval)

        client = threading.Thread(target=loop, daemon=True)
        client.start()
        time.sleep(2)
        lost = time.perf_counter()
        run(["bash", SWARM_SETUP, "stop-node", "2"], timeout=120)
        stopped = True
        log(f"node loss: node 2 stopped in {time.perf_counter() - lost:.3f}s")
        moved = None
        while time.perf_counter() < lost + watch_secs:
            if moved is None and on_manager().get("manager", 0) == 4:
                moved = time.perf_counter() - lost
            time.sleep(0.5)
        stop.set()
        client.join(timeout=10)
        after = [(t - lost, ok) for t, ok in seen if t >= lost]
        failed = [t for t, ok in after if not ok]
        out = {
            "requests": len(after), "failed": len(failed), "last_failure": max(failed) if failed else 0.0,
            "first_failure": min(failed) if failed else None, "moved": moved, "spread": spread,
            "before_failed": sum(1 for t, ok in seen if t < lost and not ok),
        }
        results["node_loss"] = out
        log(f"node loss: {out}")
    finally:
        if stopped:
            run(["bash", SWARM_SETUP, "start-node", "2"], check=False, timeout=180)
        server.api("DELETE", f"/projects/{project}")
        server.stop()
        shutil.copy(server.log_path, os.path.join(work, "server-swarm-loss.log"))
        engine.cleanup()


def med(values):
    return statistics.median(values) if values else float("nan")


def summarize(results):
    """Per engine and kind: medians of the timeline's parts."""
    rows = []
    for name, out in results.items():
        floor = med(out["floor"])
        floor_flags = med(out["floor_flags"])
        for kind in ("first", "redeploy"):
            runs = out[kind]
            if not runs:
                continue

            def part(f):
                return med([f(m) for m in runs])

            total = part(lambda m: m["served"])
            build = part(lambda m: m["built"] - m["building"])
            minus = part(lambda m: m["served"] - (m["built"] - m["building"]))
            rows.append({
                "engine": name, "kind": kind, "n": len(runs), "total": total, "build": build,
                "minus_build": minus, "floor": floor, "floor_flags": floor_flags,
                "ratio": minus / floor, "ratio_flags": minus / floor_flags,
                "transport": part(lambda m: m["received"]),
                "prepare": part(lambda m: m["building"] - m["received"]),
                "after_build": part(lambda m: m["starting"] - m["built"]),
                "start_container": part(lambda m: m["waiting"] - m["starting"]),
                "health_switch": part(lambda m: m["served"] - m["waiting"]),
                "start_to_live": part(lambda m: m["served"] - m["starting"]),
                "push_returned": part(lambda m: m["exit"]),
                "built_reported": part(lambda m: m.get("built_reported", float("nan"))),
            })
    return rows


def print_table(rows, results):
    w = sys.stdout.write
    w("\nPush-to-live of examples/dockerfile-hello vs the floor (`ENGINE run` until it answers HTTP); "
      f"medians, seconds; target: (total - build) / floor < {TARGET}x\n\n")
    head = f"{'engine':<8} {'deploy':<9} {'total':>7} {'build':>7} {'-build':>7} {'floor':>7} {'ratio':>7} " \
           f"{'target':>7}  {'floor+flags':>11} {'ratio':>6}\n"
    w(head)
    w("-" * (len(head) - 1) + "\n")
    for row in rows:
        verdict = "ok" if row["ratio"] < TARGET else "MISS"
        w(f"{row['engine']:<8} {row['kind']:<9} {row['total']:7.3f} {row['build']:7.3f} {row['minus_build']:7.3f} "
          f"{row['floor']:7.3f} {row['ratio']:6.2f}x {TARGET:5.1f}x {verdict:<4} {row['floor_flags']:8.3f} "
          f"{row['ratio_flags']:6.2f}x\n")
    w("\nWhere the time goes (medians, seconds from `git push` start):\n\n")
    head = f"{'engine':<8} {'deploy':<9} {'transport':>9} {'prepare':>7} {'build':>7} {'->start':>8} {'create+run':>10} " \
           f"{'health+switch':>13} {'start->live':>11} {'push returned':>13}\n"
    w(head)
    w("-" * (len(head) - 1) + "\n")
    for row in rows:
        w(f"{row['engine']:<8} {row['kind']:<9} {row['transport']:9.3f} {row['prepare']:7.3f} {row['build']:7.3f} "
          f"{row['after_build']:8.3f} {row['start_container']:10.3f} {row['health_switch']:13.3f} "
          f"{row['start_to_live']:11.3f} {row['push_returned']:13.3f}\n")
    w("\n  transport: push start -> the first `Building NAME vN` line (ssh, git receive-pack)\n"
      "  prepare: -> `Building image` line (checkout, build plan, build context)\n"
      "  build: `Building image` -> `Built` line (the engine's build, set aside)\n"
      "  ->start: `Built` -> `Starting vN` (hooks, store)\n"
      "  create+run: `Starting vN` -> `Waiting for web.1` (the runtime's start: create, start, inspect)\n"
      "  health+switch: -> the ingress serves the new page (health polling, switch, the poller's own interval)\n"
      "  floor+flags: the floor with the flags the driver adds (init, limits, capabilities, restart policy)\n\n")
    by = {(row["engine"], row["kind"]): row for row in rows}
    for kind in ("first", "redeploy"):
        swarm, docker = by.get(("swarm", kind)), by.get(("docker", kind))
        if swarm and docker:
            w(f"swarm vs the Docker driver, {kind} deploy: total {swarm['total']:.3f}s vs {docker['total']:.3f}s "
              f"({swarm['total'] / docker['total']:.2f}x), build aside {swarm['minus_build']:.3f}s vs "
              f"{docker['minus_build']:.3f}s ({swarm['minus_build'] / docker['minus_build']:.2f}x)\n")
    w("\n")
    for name, out in results.items():
        w(f"{name} rounds: first {fmt([m['served'] for m in out['first']])}; "
          f"redeploy {fmt([m['served'] for m in out['redeploy']])}; floor {fmt(out['floor'])}; "
          f"floor+flags {fmt(out['floor_flags'])}; load {', '.join(out['load'])}\n")
    sys.stdout.flush()


def print_node_loss(out):
    w = sys.stdout.write
    moved = f"{out['moved']:.1f}s" if out["moved"] is not None else "not within the watch"
    w("\nSwarm, node 2's engine stopped under load (4 replicas over both nodes, one request at a time "
      "through the ingress):\n"
      f"  time from the loss until no request fails: {out['last_failure']:.2f}s "
      f"({out['failed']} of {out['requests']} requests failed after the loss"
      + (f", the first {out['first_failure']:.2f}s after it" if out["first_failure"] is not None else "")
      + f"); all 4 replicas running on the manager after {moved}\n")
    sys.stdout.flush()


def fmt(values):
    return " ".join(f"{v:.3f}" for v in values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paastech", required=True, help="the paastech binary to measure")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", default="docker,podman")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="poll interval of the ingress and the floor")
    parser.add_argument("--json", help="write the raw timelines to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    parser.add_argument("--verbose", action="store_true", help="print each push's timestamped output")
    parser.add_argument("--node-loss", action="store_true",
                        help="swarm: also measure the time from a node's loss until no request fails")
    parser.add_argument("--watch-secs", type=float, default=45.0, help="how long to watch after the node's loss")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            parser.error(f"unknown engine {e!r}: known are {', '.join(ENGINES)}")

    work = tempfile.mkdtemp(prefix="paastech-bench-containers.")
    procs = Processes()

    def cleanup():
        procs.stop_all()
        for e in engines:
            Engine(e).remove_containers(f"paastech.bench-containers={os.getpid()}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log(f"work directory {work}; load {load()}; {args.rounds} rounds on {', '.join(engines)}")
    results = {}
    for e in engines:
        bench_engine(args.paastech, e, work, procs, args.rounds, args.poll_ms / 1000, results, args.verbose)
    loss = {}
    if args.node_loss:
        node_loss(args.paastech, work, procs, 0.01, args.watch_secs, loss)
    rows = summarize(results)
    print_table(rows, results)
    if loss:
        print_node_loss(loss["node_loss"])
        results["node_loss"] = loss["node_loss"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "raw": results}, f, indent=1)
    log(f"done; load {load()}")


if __name__ == "__main__":
    main()
