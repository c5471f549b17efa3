"""A real two-node Ray cluster on one host, for tests and benchmarks: a head and a second node, each its own `ray start --block`."""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from helpers import free_port

RAY = str(Path(sys.executable).with_name("ray"))  # the `ray` CLI of this interpreter's environment
LOOPBACK = "127.0.0.1"


def session_pids(
    sid: int,  # session id: the pid of a `ray start --block` started with `start_new_session=True`
) -> list[int]:
    "Every live (not zombie) process of session `sid`: the node's `ray start`, GCS, raylet, agents, workers."
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(name))
    return pids


def pss_mb(
    pids: list[int],  # processes
) -> float:
    "Proportional set size of `pids` together, in MiB (shared pages split between their sharers)."
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def kill_session(
    sid: int,  # session id of one node
    sig: int = signal.SIGKILL,  # SIGKILL: a crash; SIGTERM: `ray start --block` drains the node, then stops it
    timeout: float = 60.0,  # seconds to wait for them all to exit before killing the rest
) -> float:
    "Send `sig` to one node's processes, wait until none is left (SIGKILL the rest at `timeout`); return seconds."
    t0 = time.monotonic()
    if sig != signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sid, sig)  # `ray start --block` handles SIGTERM: drain, then stop its processes
    while pids := session_pids(sid):
        if sig == signal.SIGKILL or time.monotonic() - t0 > timeout:
            for pid in pids:  # again each round: a raylet may fork a worker meanwhile
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return time.monotonic() - t0


@dataclass
class RayNode:
    "One `ray start --block` process (a session of its own) and its log."

    name: str  # "head" or "node2"
    proc: subprocess.Popen  # the `ray start --block` process; its pid is the session id of the node
    log: Path  # its stdout and stderr
    temp_dir: Path  # the node's --temp-dir

    def alive(self) -> bool:
        "Whether its `ray start --block` still runs."
        return self.proc.poll() is None

    def wait_started(
        self,
        timeout: float = 120.0,  # seconds
    ):
        "Block until `ray start` says the node runs; fail with its log otherwise."
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            text = self.log.read_text(errors="replace")
            if "Ray runtime started" in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"Ray {self.name} did not start (rc={self.proc.poll()}):\n{self.log.read_text()[-4000:]}")

    def kill(
        self,
        sig: int = signal.SIGKILL,  # SIGKILL simulates a crash
    ) -> float:
        "Stop this node and every process it started; return the seconds it took."
        took = kill_session(self.proc.pid, sig)
        self.proc.wait(timeout=10)
        return took


RAYLET_TIMED_OUT = "The current node timed out during startup"  # `ray start` gives a raylet 30 s to register, hard-coded


def start_node(
    name: str,  # "head" or "node2"
    args: list[str],  # `ray start` arguments
    temp_dir: Path,  # the node's own Ray temp dir
    env: dict,  # environment of the node's processes
) -> RayNode:
    "Start `ray start --block <args>` as a session of its own (so it can be killed alone) and return it."
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = temp_dir.parent / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--temp-dir", str(temp_dir), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return RayNode(name, proc, log, temp_dir)


@dataclass
class RayCluster:
    "A head and a second node (custom resource `node2`) on 127.0.0.1, each with 1 CPU and its own temp dir."

    root: Path  # folder holding both temp dirs and the logs
    gcs_port: int
    dashboard_port: int
    head: RayNode = None
    node2: RayNode = None
    env: dict = field(default_factory=dict)  # env for drivers in subprocesses: RAY_ADDRESS and friends
    node2_args: list = field(default_factory=list)  # how the second node was started, to start it again
    timings: dict = field(default_factory=dict)  # seconds each step took

    @property
    def address(self) -> str:
        "The GCS address drivers connect to (`RAY_ADDRESS`)."
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def head_dashboard_url(self) -> str:
        "The head's dashboard (and state API, and Serve REST API)."
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def state(self, resource: str) -> list[dict]:
        "Rows of the head's state API (`nodes`, `actors`, ...), alive or dead (no `ray.init` in this process)."
        req = urllib.request.Request(
            f"{self.head_dashboard_url}/api/v0/{resource}?limit=1000&detail=true",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)["data"]["result"]["result"]

    def kv_keys(self, namespace: str) -> list[str]:
        "The keys in one namespace of the cluster's key-value store (the GCS's), read by a driver of its own."
        script = (
            "import json, ray; from ray.experimental.internal_kv import _internal_kv_list; ray.init(); "
            f"print(json.dumps([k.decode() for k in _internal_kv_list('', namespace={namespace!r})]))"
        )
        r = subprocess.run([sys.executable, "-c", script], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.splitlines()[-1])

    def nodes(self) -> list[dict]:
        "Every node the GCS knows, alive or dead."
        return self.state("nodes")

    def actor_nodes(self, class_name: str, alive: bool = False) -> list[str]:
        "The node ids of the actors whose class name contains `class_name` that ran (alive or dead, or `alive` only)."
        actors = [a for a in self.state("actors") if class_name in a["class_name"] and a["node_id"]]  # placed at some point
        return [a["node_id"] for a in actors if not alive or a["state"] == "ALIVE"]

    def wait_idle(self, timeout: float = 120.0):
        "Block until no placement group holds resources (Train and Tune release theirs a little after they end)."
        deadline = time.monotonic() + timeout
        while held := [g for g in self.state("placement_groups") if g["state"] in ("CREATED", "PENDING", "RESCHEDULING")]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"placement groups still hold resources: {held}")
            time.sleep(1)

    def alive_nodes(self) -> list[dict]:
        "The nodes the GCS holds ALIVE."
        return [n for n in self.nodes() if n["state"] == "ALIVE"]

    def wait_nodes(
        self,
        n: int,  # how many ALIVE nodes to wait for
        timeout: float = 120.0,  # seconds
    ) -> float:
        "Block until exactly `n` nodes are ALIVE; return the seconds it took."
        t0, last = time.monotonic(), None
        while time.monotonic() - t0 < timeout:
            try:
                last = self.alive_nodes()
                if len(last) == n:
                    return time.monotonic() - t0
            except Exception as e:  # dashboard not up yet
                last = repr(e)
            time.sleep(0.5)
        raise RuntimeError(f"expected {n} alive Ray nodes, got {last}")

    def memory_mb(self) -> dict:
        "PSS in MiB of each node's processes (raylet, GCS, agents, dashboard, workers, replicas)."
        return {n.name: round(pss_mb(session_pids(n.proc.pid)), 1) for n in (self.head, self.node2) if n}

    def node2_id(self) -> str:
        "Node id of the live second node (the one with the `node2` resource; once killed and restarted, the GCS still lists the dead one)."
        return next(n["node_id"] for n in self.alive_nodes() if "node2" in (n.get("resources_total") or {}))

    def head_id(self) -> str:
        "Node id of the head."
        return next(n["node_id"] for n in self.nodes() if n["is_head_node"])

    def kill_second_node(
        self,
        sig: int = signal.SIGKILL,  # SIGKILL: a crash; SIGTERM: a drain, then a stop
    ) -> float:
        "Kill the second node and all its processes (workers, replicas) only; return the seconds the kill took."
        return self.node2.kill(sig)

    def start_second_node(
        self,
        temp_dir: Path,  # its own Ray temp dir
        tries: int = 5,  # `ray start`s, when the raylet did not register in time
    ):
        """Start the second node; start it again when `ray start` gave up on its raylet (on a machine busy with the tests, the
        GCS may not answer within the 30 s `ray start` allows: the setup of the cluster, not what a test proves). Before the next
        try, the head has seen everything the failed one started die. Every failed try is counted in `timings`."""
        for attempt in range(1, tries + 1):
            self.node2 = start_node("node2", self.node2_args, temp_dir, self.env)
            try:
                self.node2.wait_started()
            except RuntimeError:
                self.timings["node2_start_failures"] = self.timings.get("node2_start_failures", 0) + 1
                if attempt == tries or RAYLET_TIMED_OUT not in self.node2.log.read_text(errors="replace"):
                    raise
                self.node2.kill()  # what that try started; its raylet may have registered after `ray start` gave up on it
                self.wait_nodes(1, timeout=300)
            else:
                return

    def ensure_second_node(self):
        "Start the second node again if it is down (a test killed it), once the head has seen it die; wait until both are ALIVE."
        if self.node2.alive():
            return
        self.wait_nodes(1, timeout=300)  # else the old node, not yet marked dead, counts among the ALIVE ones
        self.start_second_node(self.root / "w2")
        self.wait_nodes(2)

    def stop(self):
        "Stop both nodes, second node first; nothing of theirs is left running."
        for node in (self.node2, self.head):
            if node is not None and session_pids(node.proc.pid):
                node.kill(signal.SIGKILL)


def start_cluster(
    root: Path,  # folder for the temp dirs and logs (keep it short: Ray socket paths must stay < 108 chars)
    object_store_mb: int = 100,  # object store per node
    node_env: dict | None = None,  # extra env for every Ray process of both nodes (workers, replicas, proxy)
) -> RayCluster:
    "Start a head, then a second node with the `node2` resource, and wait until the GCS holds both ALIVE."
    # Token auth with a token of this cluster's own: `ray start --head` turns token auth on by itself when
    # ~/.ray/auth_token exists, but `ray start --address` does not, and then the second node is refused.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    env.update(node_env or {})
    c = RayCluster(root, free_port(""), free_port(""), env=env)
    common = ["--num-cpus", "1", "--object-store-memory", str(object_store_mb << 20)]
    common += ["--disable-usage-stats", "--log-style", "record"]
    t0 = time.monotonic()
    try:
        head_args = ["--head", "--port", str(c.gcs_port), "--include-dashboard=true", "--dashboard-host", LOOPBACK]
        head_args += ["--dashboard-port", str(c.dashboard_port), "--ray-client-server-port", str(free_port(""))]
        head_args += ["--dashboard-agent-listen-port", str(free_port(""))]
        c.head = start_node("head", head_args + common, root / "h", env)
        c.head.wait_started()
        c.timings["head_start_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        node2_args = ["--address", c.address, "--resources", json.dumps({"node2": 1})]
        node2_args += ["--dashboard-agent-listen-port", str(free_port(""))]
        c.node2_args = node2_args + common
        c.start_second_node(root / "w")
        c.timings["node2_start_s"] = time.monotonic() - t1
        c.wait_nodes(2)
        c.timings["both_alive_s"] = time.monotonic() - t0
    except BaseException:
        c.stop()
        raise
    c.env["RAY_ADDRESS"] = c.address
    return c
