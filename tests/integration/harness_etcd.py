"""Real etcd for the fleet tests: single nodes and three-node clusters of the
etcd-server package's `etcd` on 127.0.0.1, with ports picked at run time.

Python standard library only. Everything waits on a condition with a deadline.

Pieces:
  EtcdMember        one etcd process: its ports, data dir and log file; start, stop
                    (SIGTERM), kill (SIGKILL), freeze/thaw (SIGSTOP/SIGCONT: a member
                    that holds its connections open and answers nothing), restart with
                    the same data, gateway requests (POST /v3/...)
  EtcdCluster       size members sharing one initial cluster; start and wait until
                    healthy, find and kill the leader, wait for a new one, etcdctl
                    helpers (put, get, history of a key walked back revision by revision,
                    compaction), close (no process left behind)
  start_etcd(test)  a started cluster whose close is registered with test.addCleanup,
                    so it runs even when the test (or its setUp) fails
  EtcdTestCase      unittest base class with a watchdog and self.etcd(size)

Every member gets its own data dir and log file in the cluster's work dir (a temp
dir, or one under FICUS_TEST_OUTPUT). close() removes the data dirs (etcd
preallocates 64 MiB of WAL per member) and keeps the logs when the test failed.

Election timings are short (heartbeat 50 ms, election 500 ms) so that a cluster
re-elects within about a second after its leader is killed; with them the
smallest lease etcd grants is 1 s (it is ceil(1.5 * election timeout)).

A process started here dies with the test process (PR_SET_PDEATHSIG), is killed at
interpreter exit if still running (atexit), and close() waits for each exit.
"""

import atexit
import base64
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
import unittest
import urllib.error
import urllib.request

from harness import WatchdogExpired, _watchdog, free_port, make_workdir, wait_until, _workdirs

ETCD = os.environ.get("FICUS_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = os.environ.get("FICUS_ETCDCTL") or shutil.which("etcdctl") or "/usr/bin/etcdctl"

HEARTBEAT_MS = 50
ELECTION_MS = 500
START_ATTEMPTS = 3  # a port picked by free_port can be taken before etcd binds it

# Every etcd this module started and has not yet seen exit: killed at exit whatever happens.
_live = set()


@atexit.register
def _kill_leftovers():
    for p in list(_live):
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        _live.discard(p)


def _die_with_parent():
    """Runs in the child before exec: SIGKILL when the test process dies, even by
    SIGKILL (a ctest timeout), so that no etcd outlives its test."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - atexit and close() still clean up
        pass


def etcd_available():
    return os.access(ETCD, os.X_OK) and os.access(ETCDCTL, os.X_OK)


def b64(s):
    """base64 of a str or bytes, as the gateway wants keys and values."""
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def unb64(s):
    return base64.b64decode(s) if s else b""


def prefix_end(prefix):
    """The range_end that covers every key starting with prefix: the prefix with its
    last byte below 0xff incremented (bytes after it dropped)."""
    p = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\0"  # every key
    p[-1] += 1
    return bytes(p)


class EtcdError(Exception):
    """The gateway answered an error: status, and the body's code and message."""

    def __init__(self, status, body):
        self.status = status
        self.body = body
        try:
            j = json.loads(body)
            self.code, self.message = j.get("code"), j.get("message")
        except ValueError:
            self.code, self.message = None, body
        super().__init__("etcd answered %d: %s" % (status, body[:300]))


class EtcdMember:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = os.path.join(cluster.workdir, name + ".data")
        self.log_path = os.path.join(cluster.workdir, name + ".log")
        self.proc = None
        self.member_id = None  # decimal string, as the gateway writes it; known once up
        self.starts = 0

    def __repr__(self):
        return "<etcd %s :%d %s>" % (self.name, self.client_port,
                                     "running" if self.running else "stopped")

    @property
    def client_url(self):
        return "http://127.0.0.1:%d" % self.client_port

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def command(self):
        c = self.cluster
        return [ETCD, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", c.initial_cluster(),
                "--initial-cluster-state", "new",
                "--initial-cluster-token", c.token,
                "--heartbeat-interval", str(c.heartbeat_ms),
                "--election-timeout", str(c.election_ms),
                "--logger", "zap", "--log-outputs", "stderr"] + c.extra_args

    def start(self):
        """Starts the process (on its existing data, after a stop or kill). Does not
        wait: EtcdCluster.wait_healthy does."""
        assert not self.running, "%s is already running" % self.name
        log = open(self.log_path, "ab")
        try:
            log.write(b"\n==== start %d ====\n" % (self.starts + 1))
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=self.cluster.workdir,
                                         preexec_fn=_die_with_parent)
        finally:
            log.close()
        _live.add(self.proc)
        self.starts += 1

    def _wait_exit(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        _live.discard(self.proc)

    def stop(self, timeout=10):
        """SIGTERM and wait for the exit (SIGKILL after timeout). A leader hands its
        leadership over before it exits."""
        if self.running:
            self.thaw()
            self.proc.send_signal(signal.SIGTERM)
        if self.proc is not None:
            self._wait_exit(timeout)

    def kill(self):
        """SIGKILL: the member vanishes without a word, its sockets reset."""
        if self.running:
            self.proc.kill()
        if self.proc is not None:
            self._wait_exit(10)

    def freeze(self):
        """SIGSTOP: connections stay open and nothing answers (a hung or partitioned
        member as its clients see it)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self):
        self.stop()
        self.start()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # ---- the v3 JSON gateway ----

    def post(self, path, body, timeout=5.0):
        """POSTs body (a dict) to the gateway path ("/v3/kv/range"); returns the decoded
        answer, raises EtcdError for an error status, OSError when unreachable."""
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.client_url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            raise EtcdError(e.code, e.read().decode("utf-8", "replace")) from None

    def healthy(self, timeout=1.0):
        """GET /health says true: the member has a leader and serves a quorum read."""
        if not self.running:
            return False
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=timeout) as r:
                return json.loads(r.read().decode()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self, timeout=1.0):
        """/v3/maintenance/status: {"header":{"member_id":..},"leader":..,"raftTerm":..}."""
        return self.post("/v3/maintenance/status", {}, timeout=timeout)


class EtcdCluster:
    def __init__(self, workdir, size=1, heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS,
                 extra_args=()):
        assert size >= 1
        self.extra_args = list(extra_args)  # more etcd flags for every member
        self.workdir = workdir
        self.size = size
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.token = "ficus-test-%d-%d" % (os.getpid(), int(time.monotonic() * 1e6))
        self.members = [EtcdMember(self, "n%d" % (i + 1)) for i in range(size)]
        self.closed = False

    def __repr__(self):
        return "<etcd cluster %s>" % self.members

    def initial_cluster(self):
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)

    @property
    def endpoints(self):
        """The client URLs, as ficus's state_store.endpoints wants them."""
        return [m.client_url for m in self.members]

    def running(self):
        return [m for m in self.members if m.running]

    # ---- start and health ----

    def start(self, timeout=20.0):
        """Starts every member and waits until the cluster is healthy. A member that
        exits during the start because its port was taken meanwhile makes the whole
        cluster start again on new ports (up to START_ATTEMPTS times)."""
        for attempt in range(START_ATTEMPTS):
            for m in self.members:
                m.start()
            try:
                self.wait_healthy(timeout)
                return self
            except AssertionError:
                logs = [m.log_text() for m in self.members]
                if attempt + 1 == START_ATTEMPTS or not any(
                        "address already in use" in t for t in logs):
                    raise
            for m in self.members:  # a port race: new ports, new data, same names
                m.kill()
                shutil.rmtree(m.data_dir, ignore_errors=True)
                m.client_port, m.peer_port = free_port(), free_port()
            self.token += "r"
        return self

    def _problem(self):
        dead = [m for m in self.members if m.proc is not None and not m.running]
        return "" if not dead else " (exited: %s; see %s)" % (
            ", ".join("%s rc=%s" % (m.name, m.proc.returncode) for m in dead), self.workdir)

    def wait_healthy(self, timeout=20.0, members=None):
        """Waits until every given member (default: every running one) is healthy and
        they agree on one leader that is among them. Returns the leader."""
        deadline = time.monotonic() + timeout
        ms = members if members is not None else self.running()
        assert ms, "no member is running"
        while True:
            leader = None
            if all(m.healthy() for m in ms):
                try:
                    sts = [m.status() for m in ms]
                    for m, st in zip(ms, sts):
                        m.member_id = st["header"]["member_id"]
                    leaders = {st.get("leader") for st in sts}
                    if len(leaders) == 1:
                        lid = leaders.pop()
                        leader = next((m for m in self.members if m.member_id == lid), None)
                except (OSError, EtcdError, KeyError, ValueError):
                    leader = None
            if leader is not None and leader.running:
                return leader
            if time.monotonic() >= deadline:
                raise AssertionError("etcd not healthy after %.1fs: %s%s"
                                     % (timeout, ms, self._problem()))
            if any(m.proc is not None and not m.running for m in ms):
                raise AssertionError("etcd member exited while starting%s" % self._problem())
            time.sleep(0.02)

    def leader(self, timeout=10.0):
        """The member the running members agree is the leader (waits for one)."""
        return self.wait_healthy(timeout)

    def kill_leader(self):
        """SIGKILLs the current leader; returns it."""
        old = self.leader()
        old.kill()
        return old

    def wait_new_leader(self, old, timeout=10.0):
        """Waits until the running members, without old, agree on a leader; returns it."""
        ms = [m for m in self.running() if m is not old]
        new = self.wait_healthy(timeout, members=ms)
        assert new is not old
        return new

    def any_member(self):
        """A running, healthy member to send requests to."""
        for m in self.running():
            if m.healthy():
                return m
        raise AssertionError("no healthy etcd member%s" % self._problem())

    def stop_all(self):
        for m in self.members:
            m.stop()

    def kill_all(self):
        for m in self.members:
            m.kill()

    def close(self, keep_logs=False):
        """Stops every member (SIGKILL: nothing to persist), checks that none is left,
        removes the data dirs, and the work dir too unless keep_logs."""
        if self.closed:
            return
        self.closed = True
        for m in self.members:
            m.thaw()
            m.kill()
        left = [m for m in self.members if m.running]
        for m in self.members:
            shutil.rmtree(m.data_dir, ignore_errors=True)
        if not keep_logs and self.workdir in _workdirs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif keep_logs:
            print("\n[etcd logs kept in %s]" % self.workdir)
        assert not left, "etcd members still running after close: %s" % left

    # ---- etcdctl ----

    def etcdctl(self, *args, timeout=10.0, check=True, endpoints=None):
        """Runs etcdctl against the running members (or endpoints); returns stdout."""
        eps = endpoints or [m.client_url for m in self.running()] or self.endpoints
        cmd = [ETCDCTL, "--endpoints=" + ",".join(eps), "--command-timeout=%ds" % max(1, timeout)]
        p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, timeout=timeout + 5,
                           env=dict(os.environ, ETCDCTL_API="3"))
        if check and p.returncode != 0:
            raise AssertionError("etcdctl %s failed (%d): %s"
                                 % (" ".join(map(str, args)), p.returncode,
                                    p.stderr.decode("utf-8", "replace")))
        return p.stdout.decode("utf-8", "replace")

    def put(self, key, value, lease=None):
        """Writes value (str or bytes; a dict is dumped as JSON) at key; returns the
        revision of the write."""
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        args = ["put", "-w", "json", key]
        if lease is not None:
            args.append("--lease=%x" % int(lease))
        # The value goes on stdin: a value starting with "-" would be read as a flag.
        cmd = [ETCDCTL, "--endpoints=" + ",".join(m.client_url for m in self.running())]
        data = value.encode() if isinstance(value, str) else value
        p = subprocess.run(cmd + args, input=data, capture_output=True, timeout=15,
                           env=dict(os.environ, ETCDCTL_API="3"))
        if p.returncode != 0:
            raise AssertionError("etcdctl put %s failed: %s" % (key, p.stderr.decode()))
        return int(json.loads(p.stdout)["header"]["revision"])

    def get_kv(self, key, revision=None, prefix=False):
        """The kvs at key (or under it with prefix) as dicts with decoded key and value
        and int revisions, at revision (default: now)."""
        args = ["get", "-w", "json", key]
        if revision is not None:
            args.append("--rev=%d" % revision)
        if prefix:
            args.append("--prefix")
        out = json.loads(self.etcdctl(*args))
        kvs = []
        for kv in out.get("kvs", []):
            kvs.append({"key": unb64(kv["key"]).decode("utf-8", "replace"),
                        "value": unb64(kv.get("value")),
                        "create_revision": int(kv.get("create_revision", 0)),
                        "mod_revision": int(kv.get("mod_revision", 0)),
                        "version": int(kv.get("version", 0)),
                        "lease": int(kv.get("lease", 0))})
        return kvs

    def get(self, key, revision=None):
        """The value (bytes) at key, or None."""
        kvs = self.get_kv(key, revision)
        return kvs[0]["value"] if kvs else None

    def get_json(self, key, revision=None):
        v = self.get(key, revision)
        return None if v is None else json.loads(v)

    def revision(self):
        """The store's current revision."""
        out = json.loads(self.etcdctl("get", "-w", "json", "--keys-only", "--limit=1", "/"))
        return int(out["header"]["revision"])

    def history(self, key):
        """The key's values since it was last created, oldest first, as
        [(mod_revision, value bytes)], walked back revision by revision (a range at
        mod_revision - 1 gives the value before each write). Raises AssertionError when
        a revision it needs was compacted."""
        out = []
        kvs = self.get_kv(key)
        while kvs:
            kv = kvs[0]
            out.append((kv["mod_revision"], kv["value"]))
            if kv["version"] <= 1:
                break
            try:
                kvs = self.get_kv(key, revision=kv["mod_revision"] - 1)
            except AssertionError as e:
                if "compacted" in str(e):
                    raise AssertionError("history of %s: revision %d is compacted"
                                         % (key, kv["mod_revision"] - 1)) from None
                raise
        out.reverse()
        return out

    def compact(self, revision=None):
        """Compacts the history up to revision (default: the current one)."""
        rev = revision if revision is not None else self.revision()
        self.etcdctl("compaction", "--physical", rev)
        return rev

    def grant(self, ttl):
        """A new lease of ttl seconds; returns its id (int)."""
        out = self.etcdctl("lease", "grant", ttl)
        # "lease 694d7c1b2c8a1a0e granted with TTL(5s)"
        return int(out.split()[1], 16)


def _test_failed(test):
    outcome = getattr(test, "_outcome", None)
    if outcome is None:
        return False
    result = getattr(outcome, "result", None)
    if result is not None:  # Python 3.11+
        errs = getattr(result, "errors", []) + getattr(result, "failures", [])
        return any(getattr(t, "test_case", t) is test for t, _ in errs) or not getattr(
            outcome, "success", True)
    return not all(e[1] is None for e in getattr(outcome, "errors", []))


def start_etcd(test, size=1, timeout=20.0, **kw):
    """A started cluster of size members for test; its close runs at the test's
    cleanup whatever happens (it keeps the logs when the test failed)."""
    if not etcd_available():
        test.skipTest("etcd and etcdctl not installed (apt-get install etcd-server etcd-client)")
    cluster = EtcdCluster(make_workdir("etcd"), size=size, **kw)
    test.addCleanup(lambda: cluster.close(keep_logs=_test_failed(test)))
    cluster.start(timeout)
    return cluster


class EtcdTestCase(unittest.TestCase):
    """A watchdog per test; self.etcd(size) starts a cluster that is closed at cleanup."""

    WATCHDOG_SECONDS = 90

    def setUp(self):
        if not etcd_available():
            self.skipTest("etcd and etcdctl not installed (apt-get install etcd-server "
                          "etcd-client)")
        signal.signal(signal.SIGALRM, _watchdog)
        signal.alarm(self.WATCHDOG_SECONDS)
        self.addCleanup(signal.alarm, 0)

    def etcd(self, size=1, **kw):
        return start_etcd(self, size=size, **kw)


__all__ = ["EtcdCluster", "EtcdMember", "EtcdError", "EtcdTestCase", "start_etcd", "b64",
           "unb64", "prefix_end", "etcd_available", "WatchdogExpired", "wait_until"]
