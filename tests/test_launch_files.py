"""The cluster launch files, checked as far as this machine allows (no Kubernetes, no cloud,
no image registry): cluster/rayjob.yaml (KubeRay), cluster/ray-cluster.yaml (`ray up`),
cluster/slurm/smoothadv.sbatch and the Dockerfile all of them run.

- The RayJob submits in SidecarMode within what KubeRay accepts for it; KubeRay's operator can
  read the job's status (the head's dashboard listens beyond 127.0.0.1, on the head Service's
  port, a ClusterIP one) and Ray's token authentication guards it (a real Ray head in token
  mode answers the job API to the operator's header only); a failed RayJob is retried
  (backoffLimit); its entrypoint is run the way KubeRay's sidecar and Ray's job supervisor run
  it (bash, `ray job submit -- …`, `sh -c`) with `smoothadv` replaced by a stub that parses its
  arguments with the real parser and plans the preset: a first submission (or retry) runs the
  sweep, a re-submission resumes the same sweep folder.
- The `ray up` config passes Ray's own validation (what `ray up` does before it starts
  anything), runs the smoothadv image with its Ray (no second Ray installed next to it), has the
  cloud SDK its provider's autoscaler needs, gives every node the user's security group so that
  Ray's AWS provider opens nothing (it would open SSH to 0.0.0.0/0), updates apt's lists before
  installing, and its documented commands parse, the sweep driver's run in tmux by `ray exec`.
- The sbatch's sweep commands parse, for a first run and for a requeue.
- The Dockerfile pins the torch, torchvision and Ray the tests run with, takes torch from
  PyTorch's CUDA index, installs smoothadv into the base image's Ray environment.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from ports import free_port
from smoothadv.cli.main import build_parser
from smoothadv.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
RAYJOB = ROOT / "cluster" / "rayjob.yaml"
RAY_UP = ROOT / "cluster" / "ray-cluster.yaml"
SBATCH = ROOT / "cluster" / "slurm" / "smoothadv.sbatch"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CLOUD_SDK = {"aws": "boto3", "gcp": "google-api-python-client", "azure": "azure-mgmt-compute"}

# `smoothadv` as the launch files call it: the real argument parser, then `sweep plan` of the
# spec a `sweep run` names; each call is appended to $STUB_LOG as JSON.
STUB = """\
#!{python}
import contextlib, io, json, os, sys
from smoothadv.cli.main import build_parser, main
from smoothadv.sweep.spec import load_spec
argv = sys.argv[1:]
args = build_parser().parse_args(argv)  # exits 2 on anything the real command would refuse
record = {{"argv": argv}}
if args.command == "sweep" and args.sweep_command == "run":
    plan = ["sweep", "plan", args.spec] + [a for s in args.set for a in ("--set", s)]
    with contextlib.redirect_stdout(io.StringIO()):
        record["plan_exit"] = main(plan)
    record["name"] = load_spec(args.spec).name
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
"""


def stub_bin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    smoothadv = folder / "smoothadv"
    smoothadv.write_text(STUB.format(python=sys.executable))
    smoothadv.chmod(0o755)
    return folder


def stub_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def parses(argv: list[str]) -> None:
    """The real `smoothadv` parser accepts argv (argparse exits 2 otherwise)."""
    assert argv[0] == "smoothadv", argv
    build_parser().parse_args(argv[1:])


def commented_smoothadv_commands(path: Path) -> list[list[str]]:
    return [shlex.split(line.lstrip("# ").split("  #")[0])
            for line in path.read_text().splitlines()
            if re.match(r"#\s+smoothadv ", line)]


# ---- KubeRay RayJob ------------------------------------------------------------------------

def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def test_rayjob_submits_in_sidecar_mode_as_kuberay_accepts_it():
    """SidecarMode and the restrictions KubeRay's validation puts on it (ValidateRayJobSpec):
    no submitter pod template or config, no cluster selector, head restartPolicy Never or
    unset; token authentication needs rayVersion ≥ 2.52, here the image's Ray."""
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec.get("submissionMode") == "SidecarMode"
    for key in ("submitterPodTemplate", "submitterConfig", "clusterSelector"):
        assert key not in spec, key
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head.get("restartPolicy", "Never") == "Never"
    assert cluster.get("authOptions", {}).get("mode") == "token"
    assert Version(cluster["rayVersion"]) == Version(dockerfile_args()["RAY_VERSION"])
    images = {c["image"] for c in head["containers"]}
    for group in cluster["workerGroupSpecs"]:
        images |= {c["image"] for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, images  # one image, built from the Dockerfile
    assert images == {ray_up()["docker"]["image"]}


def test_rayjob_operator_reads_the_job_status_through_the_head_service_with_the_token():
    """KubeRay's operator polls the job's status at the head Service's port named "dashboard"
    (a successful sweep ends the RayJob Complete/SUCCEEDED only if it can): the dashboard
    listens beyond the head pod's loopback (dashboard-host unset is KubeRay's 0.0.0.0), on that
    port; the Service is a ClusterIP one (no LoadBalancer, NodePort or Ingress); token
    authentication is on, so the dashboard answers only with KubeRay's token (the operator
    sends it; see the test below for Ray's side)."""
    cluster = rayjob()["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    host = head["rayStartParams"].get("dashboard-host", "0.0.0.0")  # KubeRay's default
    assert host not in ("127.0.0.1", "localhost", "::1"), host
    assert head["rayStartParams"].get("include-dashboard", "true") == "true"
    for group in cluster["workerGroupSpecs"]:
        assert "dashboard-host" not in group.get("rayStartParams", {})
    ports = {p.get("name"): p["containerPort"]
             for p in head["template"]["spec"]["containers"][0].get("ports", [])}
    dashboard_port = int(head["rayStartParams"].get("dashboard-port", 8265))
    assert ports.get("dashboard", 8265) == dashboard_port
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert cluster["authOptions"]["mode"] == "token"
    assert "secretName" not in cluster["authOptions"]  # KubeRay's own random token


def test_a_failed_rayjob_is_retried_and_the_retry_resumes():
    """backoffLimit: KubeRay retries a failed RayJob on a new RayCluster (allowed in
    SidecarMode, refused only with a clusterSelector or in InteractiveMode); the retry runs the
    same entrypoint, which resumes a sweep folder it finds (the entrypoint test below)."""
    spec = rayjob()["spec"]
    assert isinstance(spec.get("backoffLimit"), int) and 1 <= spec["backoffLimit"] <= 5
    assert spec["submissionMode"] not in ("InteractiveMode",) and "clusterSelector" not in spec
    assert "sweep resume" in spec["entrypoint"] and "backoffLimit" in RAYJOB.read_text()


def test_a_token_mode_dashboard_answers_the_job_api_only_to_the_token(tmp_path):
    """Ray 2.60 with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, as KubeRay sets them in the head
    container: the job API (what the operator polls, GET /api/jobs/) refuses a request without
    the token or with another one, and answers KubeRay's header (x-ray-authorization)."""
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "SMOOTHADV_FAULTS") and not k.startswith("RAY_AUTH")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(tmp_path)})
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths
    dashboard = free_port()
    ports = [f"--{name}={free_port()}" for name in (
        "port", "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "ray-client-server-port")]
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", *ports,
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=0",
               "--num-gpus=0", "--min-worker-port=0", "--max-worker-port=0",
               f"--object-store-memory={100 * 1024**2}", "--disable-usage-stats",
               f"--temp-dir={temp}"]
    with open(tmp_path / "head.log", "wb") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dashboard}/api/jobs/"
    try:
        assert job_api(url, token, head) == 200, (tmp_path / "head.log").read_text()[-3000:]
        assert job_api(url, None, head) == 401
        assert job_api(url, secrets.token_hex(32), head) == 403
    finally:
        head.terminate()  # `ray start --block` ends the node's processes
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def job_api(url: str, token: str | None, head: subprocess.Popen) -> int:
    """The HTTP status of GET ``url`` (as KubeRay's dashboard client sends it, with the token
    when there is one), once the dashboard answers at all (within 120 s)."""
    headers = {"x-ray-authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as e:
            if e.code not in (502, 503, 504):  # (not yet up)
                return e.code
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert head.poll() is None and time.monotonic() < deadline, "the head did not start"
        time.sleep(0.5)


def run_entrypoint(entrypoint: str, root: Path, log: Path) -> subprocess.CompletedProcess:
    """As KubeRay's sidecar (bash -ce with the entrypoint spliced unquoted into
    `ray job submit … -- ENTRYPOINT ;`, BuildJobSubmitCommand) and Ray's job supervisor
    (shlex.join of the words after `--`, run by `sh -c`) run it."""
    bin_dir = stub_bin(root / "bin")
    ray = bin_dir / "ray"
    ray.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import shlex, subprocess, sys
        argv = sys.argv[1:]
        assert argv[:2] == ["job", "submit"], argv
        assert argv[argv.index("--address") + 1].startswith("http://127.0.0.1:"), argv
        words = argv[argv.index("--") + 1:]
        sys.exit(subprocess.call(["sh", "-c", shlex.join(words)]))
        """))
    ray.chmod(0o755)
    submit = ("ray job submit --address http://127.0.0.1:8265 --submission-id rayjob-x -- "
              f"{entrypoint} ;")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log)}
    return subprocess.run(["/bin/bash", "-ce", "--", submit], env=env, capture_output=True,
                          text=True, timeout=120)


def test_rayjob_entrypoint_runs_the_preset_then_resumes_it_on_resubmission(tmp_path):
    mounts = {m["mountPath"] for c in
              rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
              ["containers"] for m in c.get("volumeMounts", [])}
    entrypoint = rayjob()["spec"]["entrypoint"]
    assert "/shared" in mounts and "/shared/" in entrypoint
    shared = tmp_path / "shared"
    here = entrypoint.replace("/shared/", f"{shared}/")
    log = tmp_path / "calls.jsonl"

    first = run_entrypoint(here, tmp_path, log)
    assert first.returncode == 0, first.stderr[-3000:]
    [run] = stub_calls(log)
    args = build_parser().parse_args(run["argv"])
    assert (args.sweep_command, args.spec, args.address) == ("run", "cifar10_paper", "auto")
    assert args.spec in load_preset_names(), "the entrypoint names a packaged preset"
    assert run["plan_exit"] == 0
    sweep_dir = Path(args.storage) / run["name"]
    assert str(sweep_dir).startswith(str(shared))  # on the volume every pod mounts

    sweep_dir.mkdir(parents=True)  # what the first run leaves behind (its spec, as run)
    (sweep_dir / "sweep.yaml").write_text("name: cifar10_paper\n")
    log.unlink()
    again = run_entrypoint(here, tmp_path, log)
    assert again.returncode == 0, again.stderr[-3000:]
    [resume] = stub_calls(log)
    args = build_parser().parse_args(resume["argv"])
    assert (args.sweep_command, Path(args.sweep_dir), args.address) == (
        "resume", sweep_dir, "auto")


def load_preset_names() -> list[str]:
    from smoothadv.sweep.spec import preset_names

    return preset_names()


# ---- ray up --------------------------------------------------------------------------------

def ray_up() -> dict:
    return yaml.safe_load(RAY_UP.read_text())


def test_ray_up_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(ray_up()))


def shell_commands(lines: list[str]) -> list[list[str]]:
    """Each simple command of a list of shell lines, split into words."""
    out: list[list[str]] = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("();&|"):  # an operator ends a simple command
                if words:
                    out.append(words)
                words = []
            else:
                words.append(token)
    return out


def test_ray_up_runs_ray_from_the_smoothadv_image_with_its_cloud_sdk():
    config = ray_up()
    image = config.get("docker", {}).get("image")
    assert image, "every node runs the image built from the Dockerfile"
    sdk = CLOUD_SDK[config["provider"]["type"]]
    assert sdk in dockerfile_pip_packages(), f"the image lacks {sdk}, the autoscaler's SDK"
    # no second Ray beside the image's: nothing installs Ray or makes another environment
    setup = [*config.get("setup_commands", []), *config.get("head_setup_commands", []),
             *config.get("worker_setup_commands", [])]
    for words in shell_commands(setup):
        assert not ({"venv", "virtualenv", "conda"} & set(words)), words
        for version in re.findall(r"__version__ == '([^']+)'", " ".join(words)):
            assert version == dockerfile_args()["RAY_VERSION"], words
        if "install" in words and any(w.endswith("pip") or w == "pip" for w in words):
            assert not any(w.split("[")[0].split("=")[0] == "ray" for w in words), words
    starts = [w for w in shell_commands(config["head_start_ray_commands"]
                                        + config["worker_start_ray_commands"])
              if "ray" in Path(w[0]).name]
    assert starts and all(w[0] == "ray" for w in starts), starts  # the image's `ray`


def test_ray_up_setup_checks_pass_with_what_the_image_installs():
    """The image checks run in each container (setup_commands) pass with this environment's
    packages, outside the repository (where a bare `sweep` folder would import)."""
    checks = [w for w in shell_commands(ray_up()["setup_commands"]) if w[:2] == ["python", "-c"]]
    assert checks
    for words in checks:
        done = subprocess.run([sys.executable, "-c", words[2]], cwd="/", capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (words, done.stderr[-2000:])


def test_ray_up_dashboard_stays_on_localhost():
    config = ray_up()
    heads = [w for w in shell_commands(config["head_start_ray_commands"])
             if w[:2] == ["ray", "start"]]
    assert heads and all("--head" in w and "--dashboard-host=127.0.0.1" in w for w in heads)
    for w in shell_commands(config["worker_start_ray_commands"]):
        assert not any(a.startswith("--dashboard-host") for a in w), w
    assert "0.0.0.0" not in RAY_UP.read_text()


def test_ray_up_leaves_the_users_security_group_as_made_ssh_from_their_range_only(monkeypatch):
    """Ray's AWS provider puts its default rules, SSH from 0.0.0.0/0 among them, into a
    security group it makes or finds empty (provider.security_group, or its own default group),
    unless every node type names its groups (SecurityGroupIds): then it touches none. The
    documented commands make the group: SSH from one address range, the nodes to each other."""
    import copy

    from ray.autoscaler._private.aws import config as aws
    from ray.autoscaler._private.util import prepare_config

    assert {"CidrIp": "0.0.0.0/0"} in aws._create_default_ssh_inbound_rules()[0]["IpRanges"]
    config = prepare_config(ray_up())
    assert "security_group" not in config["provider"]
    groups = {tuple(node["node_config"].get("SecurityGroupIds", ()))
              for node in config["available_node_types"].values()}
    assert all(groups) and len(groups) == 1, groups

    def refuse(*args, **kwargs):
        raise AssertionError("Ray's AWS provider would make or fill a security group")

    monkeypatch.setattr(aws, "_upsert_security_groups", refuse)
    assert aws._configure_security_group(copy.deepcopy(config)) == config
    rules = [dict(zip(w[3::2], w[4::2], strict=True)) for w in documented(RAY_UP, "aws")
             if w[:3] == ["aws", "ec2", "authorize-security-group-ingress"]]
    assert any(w[:3] == ["aws", "ec2", "create-security-group"] for w in documented(RAY_UP, "aws"))
    assert len(rules) == 2
    for rule in rules:
        if "--cidr" in rule:  # from outside: SSH, from a range short of the internet
            assert (rule["--protocol"], rule["--port"]) == ("tcp", "22"), rule
            assert ipaddress.ip_network(rule["--cidr"]).num_addresses < 2**16, rule
        else:  # inside: every node of the cluster to every other
            assert rule["--source-group"] == rule["--group-id"], rule


def test_ray_up_updates_apt_lists_before_it_installs():
    """A fresh instance's apt has no (or stale) package lists: `apt-get install` before an
    `apt-get update` fails to find the package."""
    config = ray_up()
    for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands"):
        verbs = [apt_verb(w) for w in shell_commands(config.get(key, [])) if apt_verb(w)]
        for i, verb in enumerate(verbs):
            if verb == "install":
                assert "update" in verbs[:i], (key, verbs)
    assert "install" in [apt_verb(w) for w in shell_commands(config["initialization_commands"])]


def apt_verb(words: list[str]) -> str | None:
    """The apt-get command of a simple command (`sudo apt-get -o X=1 install -y p` → install)."""
    words = words[1:] if words[:1] == ["sudo"] else words
    if not words or Path(words[0]).name not in ("apt-get", "apt"):
        return None
    rest = iter(words[1:])
    for word in rest:
        if word in ("-o", "-c", "-t"):  # options with a value
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return None


def documented(path: Path, tool: str) -> list[list[str]]:
    """The commented example command lines of ``path`` that run ``tool``, split into words."""
    return [shlex.split(line.lstrip("# ").split("  #")[0]) for line in path.read_text().splitlines()
            if re.match(rf"#\s+{tool} ", line)]


def ray_exec_commands() -> list[dict]:
    """The documented `ray exec` lines as Ray's CLI parses them (its click command's params)."""
    from ray.scripts.scripts import exec as ray_exec

    out = []
    for words in documented(RAY_UP, "ray"):
        if words[:2] == ["ray", "exec"]:
            params = ray_exec.make_context("exec", words[2:]).params
            assert (ROOT / params["cluster_config_file"]).resolve() == RAY_UP, words
            out.append(params)
    return out


def test_ray_up_sweep_driver_runs_in_tmux_where_an_ssh_drop_does_not_end_it():
    """The documented `sweep run` and `sweep resume` go through `ray exec --tmux`: Ray runs them
    as `tmux new -d …` (in the head node's container, whose image has tmux: setup_commands
    checks it), so the driver outlives the SSH connection that started it."""
    from types import SimpleNamespace

    from ray.autoscaler._private import commands

    drivers = []
    for params in ray_exec_commands():
        argv = shlex.split(params["cmd"])
        parses(argv)
        if build_parser().parse_args(argv[1:]).sweep_command in ("run", "resume"):
            assert params["tmux"] and not params["screen"], params
            ran: list[str] = []
            runner = SimpleNamespace(run=lambda cmd, ran=ran, **_: ran.append(cmd))
            commands._exec(SimpleNamespace(cmd_runner=runner), params["cmd"], tmux=True,
                           run_env=params["run_env"])
            [line] = ran
            words = shlex.split(line)
            assert words[:5] == ["tmux", "new", "-d", "bash", "-c"], line
            assert words[5].startswith(params["cmd"]), line
            drivers.append(argv[2])
    assert sorted(drivers) == ["resume", "run"]
    assert ["tmux", "-V"] in shell_commands(ray_up()["setup_commands"])


def test_documented_commands_are_valid_smoothadv_invocations():
    commands = (commented_smoothadv_commands(RAY_UP) + commented_smoothadv_commands(RAYJOB)
                + [shlex.split(params["cmd"]) for params in ray_exec_commands()])
    assert len(commands) >= 4
    for argv in commands:
        parses(argv)
        args = build_parser().parse_args(argv[1:])
        if getattr(args, "spec", None):
            load_spec(args.spec)  # a packaged preset, by name


# ---- SLURM ---------------------------------------------------------------------------------

def test_sbatch_sweep_commands_parse_for_a_first_run_and_a_requeue(tmp_path):
    """The sbatch's last part (spec name, run or resume, the driver's command line) with the
    stub for `smoothadv`."""
    text = SBATCH.read_text()
    start = text.index("name=$(")
    end = text.index('"$SMOOTHADV" "${command[@]}"')
    launch = text[end:text.index("\n", end)].rstrip(" &")
    script = text[start:end] + launch + "\n"
    bin_dir = stub_bin(tmp_path / "bin")
    log = tmp_path / "calls.jsonl"
    storage = tmp_path / "sweeps"
    env = {**os.environ, "SPEC": "cifar10_paper", "STORAGE": str(storage),
           "PYTHON": sys.executable, "SMOOTHADV": str(bin_dir / "smoothadv"),
           "STUB_LOG": str(log), "address": "10.0.0.1:6379"}
    for requeue in (False, True):
        if requeue:
            (storage / "cifar10_paper").mkdir(parents=True)  # as the first run left it
            (storage / "cifar10_paper" / "sweep.yaml").write_text("name: cifar10_paper\n")
        out = subprocess.run(["bash", "-c", script, "sbatch", "--max-concurrent", "16"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
    first, second = stub_calls(log)
    args = build_parser().parse_args(first["argv"])
    assert (args.sweep_command, args.spec, Path(args.storage), args.address,
            args.max_concurrent) == ("run", "cifar10_paper", storage, "10.0.0.1:6379", 16)
    assert first["plan_exit"] == 0
    args = build_parser().parse_args(second["argv"])
    assert (args.sweep_command, Path(args.sweep_dir)) == ("resume", storage / "cifar10_paper")


def test_sbatch_dashboard_stays_on_localhost():
    text = SBATCH.read_text().replace("\\\n", " ")
    heads = [line for line in text.splitlines()
             if "start --head" in line and not line.lstrip().startswith("#")]
    assert heads and all("--dashboard-host=127.0.0.1" in line for line in heads)
    assert "0.0.0.0" not in text
    assert "--include-dashboard=false" not in text  # Train needs it after a node dies


# ---- Dockerfile ----------------------------------------------------------------------------

def dockerfile_instructions() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_args() -> dict[str, str]:
    args = {}
    for line in dockerfile_instructions():
        if m := re.fullmatch(r"ARG (\w+)=(\S+)", line):
            args[m[1]] = m[2]
    return args


def expand(text: str) -> str:
    args = dockerfile_args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], text)


def dockerfile_pip_installs() -> list[list[str]]:
    installs = []
    for line in dockerfile_instructions():
        if line.startswith("RUN "):
            for words in shell_commands([expand(line[4:])]):
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
    return installs


def dockerfile_pip_packages() -> set[str]:
    return {Requirement(w).name for words in dockerfile_pip_installs() for w in words
            if not w.startswith(("-", "/", "http"))}


def makefile_torch_pin() -> dict[str, str]:
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines()
                if line.startswith("TORCH_PIN"))
    return {Requirement(w).name: str(Requirement(w).specifier)
            for w in line.split("=", 1)[1].lstrip("= ").split()}


def test_dockerfile_pins_what_the_tests_run_with():
    args = dockerfile_args()
    assert makefile_torch_pin() == {"torch": f"=={args['TORCH_VERSION']}",
                                    "torchvision": f"=={args['TORCHVISION_VERSION']}"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_req = next(Requirement(r) for r in project["dependencies"]
                   if Requirement(r).name == "ray")
    assert args["RAY_VERSION"] in ray_req.specifier, (args["RAY_VERSION"], ray_req)
    assert args["RAY_VERSION"] == importlib.metadata.version("ray")
    base = next(expand(line) for line in dockerfile_instructions() if line.startswith("FROM "))
    image, tag = base.split()[1].split(":")
    assert image == "rayproject/ray", base
    python = re.search(r"-py3(\d+)", tag)
    assert tag.startswith(args["RAY_VERSION"] + "-") and python, tag
    assert Version(f"3.{python[1]}") in Requirement(
        f"python{project['requires-python']}").specifier
    assert re.search(r"-cu\d+$", tag), f"{tag}: not a CUDA image"


def test_dockerfile_installs_cuda_torch_and_smoothadv_into_rays_environment():
    args = dockerfile_args()
    installs = dockerfile_pip_installs()
    torch_install = next(w for w in installs if any(a.startswith("torch==") for a in w))
    assert f"torch=={args['TORCH_VERSION']}" in torch_install
    assert f"torchvision=={args['TORCHVISION_VERSION']}" in torch_install
    index = torch_install[torch_install.index("--index-url") + 1]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
    assert index.rsplit("/", 1)[1] == expand("${CUDA}")
    copy = next(line.split() for line in dockerfile_instructions() if line.startswith("COPY "))
    assert copy[-2] == "."
    package = next(w for w in installs if copy[-1] in w)  # smoothadv from the copied source
    pins = {Requirement(a).name: str(Requirement(a).specifier) for a in package
            if a != copy[-1] and not a.startswith("-")}
    # pip may neither move Ray off the base image's release nor torch off the CUDA build
    assert pins["ray"] == f"=={args['RAY_VERSION']}"
    assert pins["torch"] == f"=={args['TORCH_VERSION']}"
    assert pins["torchvision"] == f"=={args['TORCHVISION_VERSION']}"
    assert not any("venv" in line or "conda create" in line
                   for line in dockerfile_instructions()), "one environment: the base image's"
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".git", ".venv", "data", "sweeps"} <= ignored


@pytest.mark.parametrize("path", [RAYJOB, RAY_UP])
def test_launch_yaml_is_valid(path):
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_rayjob_entrypoint_installs_the_signing_key_from_its_secret(tmp_path, monkeypatch):
    """A resume in a new head pod signs and verifies with the same key: the entrypoint copies
    the mounted Secret to the key's place with mode 0600 (sweep.trust refuses a key others can
    read), as the head pod's volume and mount name it."""
    spec = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "signing-key"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "signing-key"]
    assert volume["secret"]["secretName"] == "smoothadv-signing-key"
    secret, home = tmp_path / "secret", tmp_path / "home"
    secret.mkdir()
    (secret / "signing.key").write_text("ab" * 32 + "\n")
    (secret / "signing.key").chmod(0o440)
    here = rayjob()["spec"]["entrypoint"].replace(mount["mountPath"], str(secret)).replace(
        "/shared/", f"{tmp_path}/shared/")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SMOOTHADV_CONFIG_DIR")
    done = run_entrypoint(here, tmp_path, tmp_path / "calls.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    key = home / ".config" / "smoothadv" / "signing.key"
    assert key.read_text() == "ab" * 32 + "\n" and key.stat().st_mode & 0o777 == 0o600
    from smoothadv.sweep import trust

    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    assert trust.key_path() == key and trust.vouched(trust.signed({"pid": 1}))
