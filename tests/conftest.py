"""Shared fixtures: closed-form base classifiers and a small trained checkpoint."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from ports import free_port
from smoothadv.sweep.local_ray import LOCAL_RAY_ENV, set_local_ray_env
from smoothadv.sweep.train_loop import NO_STATE_API
from smoothadv.trainers import build_model, load_dataset, save_checkpoint
from torch import nn

# The tests' own signing key (sweep.trust), never the user's: every command the tests start,
# drivers included, inherits this folder.
os.environ["SMOOTHADV_CONFIG_DIR"] = __import__("tempfile").mkdtemp(prefix="smoothadv-keys-")


class LinearBinary(nn.Module):
    """f(x) = 1 if w·x + b > 0 else 0 with ‖w‖ = 1, so under N(0, σ²I) noise
    P(f(x+δ) = 1) = Φ((w·x + b)/σ) and the smoothed classifier's exact ℓ2 robust radius is
    |w·x + b|, the distance to the hyperplane."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.linear = nn.Linear(w.numel(), 1)
        with torch.no_grad():
            self.linear.weight.copy_(w.flatten() / w.norm())
            self.linear.bias.fill_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.flatten(1))
        return torch.cat([-z, z], dim=1)

    def margin(self, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.linear(x.flatten().unsqueeze(0)))


@pytest.fixture
def linear_classifier():
    """A unit-normal hyperplane in 8 dimensions (inputs shaped 1×2×4) through the origin."""
    w = torch.zeros(1, 2, 4)
    w[0, 0, 0] = 1.0
    return LinearBinary(w, 0.0)


def train_briefly(model: nn.Module, dataset, sigma: float, epochs: int, seed: int = 0) -> None:
    """Gaussian-augmentation training (Cohen et al.) for the fixtures below."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x + sigma * torch.randn_like(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@pytest.fixture(scope="session")
def synthetic_checkpoint(tmp_path_factory):
    """A lenet trained for two epochs on the synthetic dataset with noise σ = 0.25."""
    model = build_model("lenet", "synthetic")
    train_briefly(model, load_dataset("synthetic", "train"), sigma=0.25, epochs=2)
    path = tmp_path_factory.mktemp("ckpt") / "lenet_synthetic.pt"
    save_checkpoint(path, model, arch="lenet", dataset="synthetic", config={"sigma": 0.25})
    return path


FAULT_TRIAL = "seed424242"  # raises after epoch 0 (once)
KILL_TRIAL = "seed434343"  # its worker process is SIGKILLed after epoch 0 (once)
RESTART_TRIAL = "seed454545"  # raises after epoch 0 (once); restarted from scratch
TRACKED_TRIAL = "pgd-sigma0.5-seed484848"  # raises after epoch 0 (once); test_trackers resumes it


@contextlib.contextmanager
def environ_restored(*keys: str):
    """Within: change these environment variables freely; after: each is as it was."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory):
    """One local Ray cluster shared by every test that runs sweeps (start-up costs seconds).

    Faults are injected through SMOOTHADV_FAULTS, which must be set before Ray starts its
    worker processes; they fire once, and only in the trials named FAULT_TRIAL, KILL_TRIAL,
    RESTART_TRIAL and TRACKED_TRIAL.
    """
    import os

    import ray

    markers = tmp_path_factory.mktemp("fault-markers")
    with environ_restored("SMOOTHADV_FAULTS", NO_STATE_API, *LOCAL_RAY_ENV):
        os.environ["SMOOTHADV_FAULTS"] = (f"after_epoch:0:{FAULT_TRIAL}:{markers};"
                                          f"kill_after_epoch:0:{KILL_TRIAL}:{markers};"
                                          f"after_epoch:0:{RESTART_TRIAL}:{markers};"
                                          f"after_epoch:0:{TRACKED_TRIAL}:{markers}")
        set_local_ray_env()  # as sweep.local_ray.init_ray starts a local Ray
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=128 * 1024**2,
                 log_to_driver=False, configure_logging=False)
        yield markers  # a fault that fired left its marker file here
        ray.shutdown()


def assert_resumed_equals_straight(straight, resumed, first_epoch: bytes, epochs: int) -> None:
    """A run resumed after its first epoch kept that epoch (its metrics line, wall time
    included, survives as is: it was not trained again) and ends with the uninterrupted run's
    weights, bit for bit, after ``epochs`` epochs."""
    from smoothadv.common.layout import CHECKPOINT, METRICS

    assert (resumed / METRICS).read_bytes().startswith(first_epoch)
    a = torch.load(straight / CHECKPOINT, weights_only=True)
    b = torch.load(resumed / CHECKPOINT, weights_only=True)
    assert b["epoch"] == epochs
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


MOTO = Path(sys.executable).parent / "moto_server"
BUCKET = "smoothadv-test"  # the one bucket of the s3_server fixture



@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with one bucket; yields the environment that points
    pyarrow (and so Ray Tune and Train) at it."""
    if not MOTO.exists():
        pytest.skip("moto[server] is not installed (the dev extra installs it)")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with environ_restored(*env):
        os.environ.update(env)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
            import pyarrow.fs as pafs

            pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing",
                              secret_key="testing", region="us-east-1",
                              allow_bucket_creation=True).create_dir(BUCKET)
            yield env
        finally:
            server.terminate()
            server.wait(timeout=30)


def sweep_yaml(values: dict) -> str:
    """A sweep folder's ``sweep.yaml`` for the spec ``values``, with its format version and
    every resources key, as sweep.spec_record writes it (for folders written by hand)."""
    from dataclasses import asdict

    from smoothadv.sweep import spec_record
    from smoothadv.sweep.spec_blocks import Resources

    resources = {**asdict(Resources()), **(values.get("resources") or {})}
    return yaml.safe_dump({"format_version": spec_record.VERSION, **values,
                           "resources": resources}, sort_keys=False)
