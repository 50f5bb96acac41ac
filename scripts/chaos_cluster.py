"""The processes scripts/chaos runs: a throwaway Postgres, `syncline serve` nodes, haproxy, the
chaos clients. Every child is started in its own process group and stopped by the harness."""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pg_bindir():
    if os.environ.get("SYNCLINE_PG_BINDIR"):
        return os.environ["SYNCLINE_PG_BINDIR"]
    try:
        return subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        versions = sorted(int(v) for v in os.listdir("/usr/lib/postgresql") if v.isdigit())
        return f"/usr/lib/postgresql/{versions[-1]}/bin"


def as_postgres(cmd):
    """initdb and postgres refuse root: run them as the `postgres` user when we are root."""
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self, workdir):
        # Outside the run folder: every folder above the data must be traversable by `postgres`.
        self.dir = tempfile.mkdtemp(prefix="syncline-chaos-pg-")
        self.workdir = workdir
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.bin = pg_bindir()
        self.url = f"postgres://syncline@127.0.0.1:{self.port}/chaos"

    def _ctl(self, *args, check=True):
        return subprocess.run(as_postgres([self.bin + "/pg_ctl", "-D", self.data] + list(args)),
                              check=check, capture_output=True, text=True)

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(as_postgres([self.bin + "/initdb", "-D", self.data, "-U", "syncline", "--auth=trust",
                                    "-E", "UTF8", "--no-locale", "--no-sync"]), check=True, capture_output=True)
        self.pg_start()
        self.psql("CREATE DATABASE chaos", db="postgres")

    def pg_start(self):
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=300 "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c shared_buffers=128MB")
        self._ctl("-l", os.path.join(self.dir, "postgres.log"), "-w", "-t", "60", "-o", opts, "start")

    def restart(self):
        self._ctl("-m", "fast", "-w", "-t", "60", "stop")
        self.pg_start()

    def stop(self):
        if os.path.exists(self.data):
            self._ctl("-m", "immediate", "-w", "stop", check=False)
        if os.path.exists(os.path.join(self.dir, "postgres.log")):
            shutil.copy(os.path.join(self.dir, "postgres.log"), os.path.join(self.workdir, "postgres.log"))

    def dsn(self, db="chaos"):
        return f"postgres://syncline@127.0.0.1:{self.port}/{db}"

    def psql(self, sql, db="chaos", variables=None, file=None):
        cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", self.dsn(db)]
        for k, v in (variables or {}).items():
            cmd += ["-v", f"{k}={v}"]
        cmd += ["-f", file] if file else ["-c", sql]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class Child:
    """A long-running child process with its output in a log file."""

    def __init__(self, name, cmd, log, env=None):
        self.name, self.cmd, self.log, self.env = name, cmd, log, env
        self.proc = None
        self.stopped = False

    def start(self):
        fh = open(self.log, "ab")
        fh.write(f"\n== {time.strftime('%H:%M:%S')} start {' '.join(self.cmd)}\n".encode())
        fh.flush()
        self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, cwd=ROOT)
        fh.close()
        self.stopped = False
        return self

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Node(Child):
    def __init__(self, index, binary, db_port, secret, workdir, extra):
        self.index = index
        self.port = free_port()
        cmd = [binary, "serve", "--database-url", f"postgres://syncline@127.0.0.1:{db_port}/chaos",
               "--port", str(self.port), "--jwt-secret", secret, "--heartbeat-ms", "2000",
               "--migrations-dir", os.path.join(ROOT, "migrations"), "--log-level", "notice"] + extra
        super().__init__(f"node{index}", cmd, os.path.join(workdir, f"node{index}.log"))

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    async def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.ready):
                return True
            if not self.alive():
                return False
            await asyncio.sleep(0.2)
        return False


_help = {}


def supports(binary, flag):
    """Whether `syncline serve` knows a flag (--drain-seconds, --retain-changes, ...: the harness
    works with servers that have them and with those that do not yet)."""
    if binary not in _help:
        out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True)
        _help[binary] = out.stdout + out.stderr
    return flag in _help[binary]


def haproxy_child(workdir, bind_port, node_ports):
    env = dict(os.environ, SYNCLINE_LB_BIND=f"127.0.0.1:{bind_port}",
               **{f"SYNCLINE_NODE{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(node_ports)})
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(binary):
        sys.exit("chaos: haproxy not found (Debian: apt-get install haproxy)")
    return Child("haproxy", [binary, "-db", "-f", os.path.join(ROOT, "deploy", "haproxy.cfg")],
                 os.path.join(workdir, "haproxy.log"), env=env)


def bin_path(build):
    if build:
        subprocess.run(["swift", "build"], cwd=ROOT, check=True)
    return subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def last_json_line(path):
    try:
        with open(path) as fh:
            lines = [l for l in fh if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
