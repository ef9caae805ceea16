"""A real multi-node Ray cluster on this machine: a head and a worker node started with
`ray start` (each with its own ports, temp folder and node name, token authentication on), and
the sweep driven through the `smoothadv` command line with `--address`, as a user runs it.

- two one-CPU trials on two one-CPU nodes run on both nodes (each trial records the Ray node
  its rank-0 worker started on in nodes.jsonl);
- the worker node is SIGKILLed (its raylet and every process under it) once the trial running
  there has written its epoch-0 checkpoint: the sweep still finishes, and that trial resumes
  from the checkpoint on the head node. Where Tune put the trials' drivers is up to Ray (each
  node holds one trial's workers and one driver), so the spec allows one worker-group restart
  (the driver survived: Train restarts the workers) and one trial restart (the driver was on
  the killed node: Tune restarts the trial), and the test holds either way;
- `sweep status` and `analyze` read the results;
- on the head alone, two trials at once (their drivers on the one node, as restarted trials
  pile onto the survivors) still finish: drivers take no CPU from the workers;
- a node that cannot see the storage folder (started in its own mount namespace with a tmpfs
  over it) makes `sweep run` refuse in one line naming that node, leaving nothing behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ports import free_port
from smoothadv.common import layout
from smoothadv.sweep import processes

# Alone, after the parallel part of `make test`: a node's death is noticed by heartbeats, which
# another test's load on the 2 cores delayed past this module's deadlines (pyproject markers).
pytestmark = pytest.mark.serial

BIN = Path(sys.executable).parent
TINY = {"dataset": "synthetic", "arch": "lenet", "method": "gaussian", "epoch_test_subset": 64,
        "batch_size": 64, "lr": 0.05, "device": "cpu",
        "certify": {"n0": 16, "n": 100, "batch_size": 100, "skip": 64}}  # 8 of 512 test images
SIGMAS = {0.25: "sigma0.25", 0.5: "sigma0.5"}  # the sweep's trials
EPOCHS = 5  # the kill lands after epoch 0: the later epochs are trained on the other node
WAIT_FOR_NODES = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
want, deadline = set(sys.argv[2:]), time.monotonic() + 120
while not want <= {n["NodeName"] for n in ray.nodes() if n["Alive"]}:
    if time.monotonic() > deadline:
        sys.exit(f"nodes {sorted(want)} did not all join: {ray.nodes()}")
    time.sleep(0.3)
print(json.dumps({n["NodeName"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}))
"""



@dataclass
class Node:
    name: str
    process: subprocess.Popen  # `ray start --block`: the node's Ray processes are under it
    log: Path

    def tree(self) -> list[processes.Process]:
        root = (self.process.pid, processes.start_time(self.process.pid))
        return [root, *processes.descendants(self.process.pid)] if processes.alive(root) else []

    def kill(self) -> None:
        """The machine dies: SIGKILL the raylet and every process of this node at once."""
        tree = self.tree()
        assert len(tree) > 3, f"{self.name}: expected a raylet and its workers, got {tree}"
        for pid, _ in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM every process of the node at once (SIGKILL what is left after 5 s): quicker
        than `ray start`'s own drain, and it ends no other Ray on this machine."""
        processes.end(self.tree(), grace_s=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Cluster:
    folder: Path  # the nodes' temp folders and logs
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: dict[str, Node] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # node name → Ray node id

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, *, head: bool = False, cpus: int = 1,
              wrapper: tuple[str, ...] = ()) -> Node:
        """Start a node (`wrapper` runs before `ray start`, e.g. in another mount namespace)."""
        ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 "--min-worker-port=0", "--max-worker-port=0",
                 f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}",
                 f"--metrics-export-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}"]
        where = (["--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={self.dashboard_port}",
                  f"--ray-client-server-port={free_port()}"] if head
                 else [f"--address={self.address}"])
        command = [*wrapper, str(BIN / "ray"), "start", "--block", *where, *ports,
                   f"--node-name={name}", f"--num-cpus={cpus}", "--num-gpus=0",
                   f"--object-store-memory={100 * 1024**2}", "--disable-usage-stats",
                   f"--temp-dir={self.folder / name}"]
        log = self.folder / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.nodes[name] = node = Node(name, process, log)
        return node

    def start_head(self, name: str, attempts: int = 3) -> Node:
        """Start the head and wait until `ray start` reports it running. A head that dies at
        start (one of its ports taken in the meantime) is started again on fresh ports."""
        for _ in range(attempts):
            # Ray Train's PlacementGroupCleaner removes the placement group of a Train
            # controller that died with its node; it asks the dashboard's state API, found
            # through this address (auto-detection would pick whichever Ray instance on this
            # machine started last).
            self.env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{self.dashboard_port}"
            node = self.start(name, head=True)
            deadline = time.monotonic() + 90
            while node.process.poll() is None and time.monotonic() < deadline:
                if b"Ray runtime started" in node.log.read_bytes():
                    return node
                time.sleep(0.3)
            node.stop()
            failed = node.log.read_text()[-3000:]
            self.port, self.dashboard_port = free_port(), free_port()
        raise AssertionError(f"the head node did not start in {attempts} attempts: {failed}")

    def wait_for(self, *names: str) -> dict[str, str]:
        """Until every named node has joined: the alive nodes' ids by name."""
        waiter = subprocess.Popen([sys.executable, "-c", WAIT_FOR_NODES, self.address, *names],
                                  env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            out, err = waiter.communicate(timeout=180)
        except subprocess.TimeoutExpired:  # e.g. ray.init waiting on a GCS that never answers
            waiter.kill()
            out, err = waiter.communicate()
        logs = {n: node.log.read_text()[-1500:] for n, node in self.nodes.items()}
        assert waiter.returncode == 0, (f"nodes {names} did not join", err[-3000:], logs)
        self.ids.update(json.loads(out.splitlines()[-1]))
        return self.ids

    def smoothadv(self, *args: str, logs: Path) -> tuple[subprocess.Popen, Path, Path]:
        """`smoothadv ARGS…` started; its stdout and stderr go to files (a pipe nobody reads
        while it runs could fill and block it)."""
        out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
        with open(out, "wb") as o, open(err, "wb") as e:
            process = subprocess.Popen([str(BIN / "smoothadv"), *args], env=self.env,
                                       stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        return process, out, err

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node, 1 CPU each, on this machine."""
    current = Path("/tmp/ray/ray_current_cluster")  # `ray start --head` records itself here
    before = current.read_bytes() if current.exists() else None
    folder = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "SMOOTHADV_FAULTS") and not k.startswith("RAY_AUTH")}
    env.update({
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        # token authentication, with a token of the test's own (~/.ray is left alone)
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
        # the head's GCS declares a dead node dead after ~5 s instead of ~15 s
        "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
        # spare a watcher actor per trial (it acts on node drains, never on a killed node)
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    })
    cluster = Cluster(folder, env)
    try:
        cluster.start_head("head-node")
        cluster.start("worker-a")
        cluster.wait_for("head-node", "worker-a")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if before is None:
            current.unlink(missing_ok=True)
        else:
            current.write_bytes(before)


def trials_on(node: Node, title: str) -> set[str]:
    """The trials that have a process titled ``title`` on ``node``, known by its working
    folder (Tune's function actor, the trial's driver, works in ``…/<trial>``)."""
    found = set()
    for pid, _ in node.tree():
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title.encode()):
                continue
            folder = Path(os.readlink(f"/proc/{pid}/cwd")).name
        except OSError:
            continue
        found |= {t for t in SIGMAS.values() if folder == t or folder.startswith(f"{t}-")}
    return found


def jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    except FileNotFoundError:
        return []


def nodes_of(sweep_dir: Path, trial: str) -> list[str]:
    """The Ray nodes the trial's rank-0 worker started on, in order (the trial records them)."""
    return [n["node_id"] for n in jsonl(layout.trial_dir(sweep_dir, trial) / layout.NODES)]


def epochs(trial_dir: Path) -> list[int]:
    return [m["epoch"] for m in jsonl(trial_dir / "metrics.jsonl")]


@dataclass
class KilledSweep:
    sweep_dir: Path
    code: int
    out: str
    err: str
    killed: str  # the trial whose worker ran on the killed node
    first_line: str  # its metrics.jsonl line for epoch 0, read when the node was killed
    killed_at: float
    drivers_on_killed_node: list[str]  # trials whose Tune driver was on it (for the record)


@pytest.fixture(scope="module")
def killed_sweep(cluster, tmp_path_factory) -> KilledSweep:
    """Two trials on the two nodes; the worker node is SIGKILLed once the trial whose Train
    worker runs there has written its epoch-0 checkpoint (and then its metrics line); the
    sweep runs to its end."""
    storage = tmp_path_factory.mktemp("storage")
    spec = {"name": "multinode", "defaults": {**TINY, "train_subset": 2048, "epochs": EPOCHS},
            "resources": {"workers": 1, "cpus_per_worker": 1, "worker_retries": 1,
                          "trial_retries": 1, "start_timeout_s": 300},
            "grid": {"sigma": list(SIGMAS)}}
    path = storage / "multinode.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep_dir = storage / "multinode"
    node_a, a_id = cluster.nodes["worker-a"], cluster.ids["worker-a"]
    driver, out, err = cluster.smoothadv("sweep", "run", str(path), "--address",
                                         cluster.address, "--storage", str(storage),
                                         "--verbose", "0", logs=storage / "driver")
    try:
        deadline = time.monotonic() + 300
        killed = None
        while killed is None:
            assert driver.poll() is None, ("the sweep ended before the kill", err.read_text())
            assert time.monotonic() < deadline, "no trial finished epoch 0 on worker-a"
            for trial in SIGMAS.values():
                metrics = layout.trial_dir(sweep_dir, trial) / "metrics.jsonl"
                if (a_id in nodes_of(sweep_dir, trial) and metrics.exists()
                        and metrics.read_text().endswith("\n")):
                    killed = trial
            time.sleep(0.05)
        drivers = trials_on(node_a, "ray::ImplicitFunc")  # for the record: Tune's drivers
        print(f"killing worker-a: it runs {killed}'s workers and the drivers of {drivers}")
        first_line = (layout.trial_dir(sweep_dir, killed) / "metrics.jsonl").read_text()
        killed_at = time.time()
        node_a.kill()
        driver.wait(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return KilledSweep(sweep_dir, driver.returncode, out.read_text(), err.read_text(), killed,
                       first_line.splitlines()[0], killed_at, sorted(drivers))


def test_trials_run_on_both_nodes(cluster, killed_sweep):
    assert "multinode: 2 trials, at most 2 at once" in killed_sweep.out  # both nodes' CPUs
    first = [nodes_of(killed_sweep.sweep_dir, trial)[0] for trial in SIGMAS.values()]
    assert sorted(first) == sorted([cluster.ids["head-node"], cluster.ids["worker-a"]])


def test_a_killed_worker_node_is_survived_and_its_trial_resumes_from_its_checkpoint(
        cluster, killed_sweep):
    sweep, head, a = killed_sweep, cluster.ids["head-node"], cluster.ids["worker-a"]
    assert sweep.code == 0, (sweep.drivers_on_killed_node, sweep.err[-3000:])
    assert cluster.nodes["worker-a"].process.poll() is not None  # the node is gone
    for trial in SIGMAS.values():
        trial_dir = layout.trial_dir(sweep.sweep_dir, trial)
        assert epochs(trial_dir) == list(range(EPOCHS))  # each epoch trained once
        assert layout.read_json(trial_dir / layout.STATE)["state"] == "TERMINATED"
        rows = pd.read_csv(trial_dir / layout.CERTIFY, sep="\t")
        assert list(rows["idx"]) == list(range(0, 512, 64))
    trial_dir = layout.trial_dir(sweep.sweep_dir, sweep.killed)
    # It started on the killed node, then (restarted by Train or by Tune) on the head node.
    starts = jsonl(trial_dir / layout.NODES)
    assert [s["node_id"] for s in starts] == [a] + [head] * (len(starts) - 1), starts
    assert len(starts) >= 2 and starts[1]["started_at"] > sweep.killed_at, starts
    metrics = jsonl(trial_dir / "metrics.jsonl")
    assert (trial_dir / "metrics.jsonl").read_text().startswith(sweep.first_line + "\n")
    # epoch 0 was trained once, before the kill; the epochs after it on the head node
    assert metrics[0]["finished_at"] < sweep.killed_at
    resumed = [m["epoch"] for m in metrics if m["finished_at"] > starts[-1]["started_at"]]
    assert resumed and resumed == list(range(resumed[0], EPOCHS)), (resumed, sweep.killed_at)


def test_status_and_analyze_read_the_results(cluster, killed_sweep, tmp_path):
    status = subprocess.run([str(BIN / "smoothadv"), "sweep", "status",
                             str(killed_sweep.sweep_dir)], capture_output=True, text=True,
                            env=cluster.env, timeout=60)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[-1] == "2 trials: 2 terminated"
    assert all(f"{EPOCHS}/{EPOCHS}" in line and "8/8" in line for line in lines[1:-2])
    assert lines[-2] == "every trial finished: `sweep resume` has nothing to run"
    report = tmp_path / "report"
    analyze = subprocess.run([str(BIN / "smoothadv"), "analyze", str(killed_sweep.sweep_dir),
                              "-o", str(report)], capture_output=True, text=True,
                             env=cluster.env, timeout=120)
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    assert "2 trials certified" in analyze.stdout, analyze.stdout
    per_trial = pd.read_csv(report / "certified_accuracy.csv")
    assert sorted(per_trial["trial"]) == ["sigma0.25", "sigma0.5"], per_trial


def test_drivers_piled_on_a_surviving_node_leave_its_cpus_to_the_workers(
        cluster, killed_sweep, tmp_path):
    """After the worker node's death only the head's one CPU is left. Two trials at once (as
    restarted trials pile onto the survivors) each put their driver there: the drivers ask Ray
    for no CPU, so one trial's worker group still gets the whole CPU and both finish in turn
    (drivers asking for 0.01 CPU each left 0.98, which no worker fits: a deadlock)."""
    assert cluster.nodes["worker-a"].process.poll() is not None  # the head alone
    spec = tmp_path / "pile.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pile", "defaults": {**TINY, "epochs": 1},
        "resources": {"workers": 1, "cpus_per_worker": 1, "start_timeout_s": 30},
        "grid": {"sigma": list(SIGMAS)}}))
    run, out, err = cluster.smoothadv("sweep", "run", str(spec), "--address", cluster.address,
                                      "--storage", str(tmp_path), "--max-concurrent", "2",
                                      "--verbose", "0", logs=tmp_path / "pile")
    try:
        run.wait(timeout=240)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err.read_text()[-3000:]
    assert "pile: 2 trials, at most 2 at once" in out.read_text()
    for trial in SIGMAS.values():
        state = layout.read_json(layout.trial_dir(tmp_path / "pile", trial) / layout.STATE)
        assert state["state"] == "TERMINATED", state


def _can_hide_a_folder(folder: Path) -> str | None:
    """Why a node cannot be given a private tmpfs over ``folder`` here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs in a private mount namespace"
    if shutil.which("unshare") is None:
        return "needs unshare(1) (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "mount",
                            "-t", "tmpfs", "-o", "size=1m", "none", str(folder)],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount failed: {probe.stderr.strip()}"


def test_a_storage_path_one_node_cannot_see_is_refused(cluster, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    if (why := _can_hide_a_folder(storage)) is not None:
        pytest.skip(why)
    # The blind node's processes (its raylet, then every worker it starts) live in a mount
    # namespace of their own in which an empty tmpfs covers the storage folder.
    hide = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t tmpfs -o size=1m smoothadv-blind "$0" && exec "$@"', str(storage))
    cluster.start("blind-b", wrapper=hide)
    try:
        cluster.wait_for("blind-b")
        spec = storage.parent / "probe.yaml"
        spec.write_text(yaml.safe_dump({"name": "probe", "defaults": {**TINY, "epochs": 1},
                                        "grid": {"sigma": [0.25]}}))
        run, out, err = cluster.smoothadv("sweep", "run", str(spec), "--address",
                                          cluster.address, "--storage", str(storage),
                                          "--verbose", "0", logs=tmp_path / "probe")
        run.wait(timeout=180)
        out, err = out.read_text(), err.read_text()
    finally:
        cluster.nodes.pop("blind-b").stop()
    assert run.returncode == 2, (out[-2000:], err[-3000:])
    errors = [line for line in err.splitlines() if line.startswith("smoothadv: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"--storage {storage / 'probe'}: a local path not visible on nodes" in errors[0]
    assert "blind-b" in errors[0] and "head-node" not in errors[0]
    assert list(storage.iterdir()) == []  # no sweep folder, no probe marker
