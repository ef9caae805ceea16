"""What the sweep driver checks on the connected Ray cluster before it runs trials: every node
reaches the storage, one trial fits, and how many trials run at once."""

from __future__ import annotations

import os
import socket

from smoothadv.common.errors import UserError, first_line
from smoothadv.sweep.spec import SweepSpec
from smoothadv.sweep.storage import SweepFolder, open_sweep


def check_storage(sweep: SweepFolder) -> None:
    """Every node must reach the sweep's storage: on a multi-node cluster a folder is probed
    from each node (it must be a mount they share); a bucket is read from every node (each
    needs its credentials), on one machine too."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if sweep.remote is None and len(nodes) <= 1:
        return
    marker = f".storage-probe-{os.getpid()}"
    sweep.local.mkdir(parents=True, exist_ok=True)
    (sweep.local / marker).write_text(socket.gethostname())
    try:
        sweep.push(sweep.local / marker)
    except OSError as e:
        (sweep.local / marker).unlink()
        raise UserError(f"--storage {sweep.where}: cannot write there "
                        f"({first_line(e)})") from None
    try:
        blind = _blind_nodes(nodes, sweep.where, marker)
    finally:
        sweep.unlink(sweep.local / marker)
    if blind and sweep.remote is None:
        raise UserError(f"--storage {sweep.where}: a local path not visible on nodes "
                        f"{sorted(blind)}; multi-node sweeps need storage every node mounts "
                        "(e.g. NFS) or a bucket (s3://…)")
    if blind:
        node, why = next(iter(sorted(blind.items())))
        raise UserError(f"--storage {sweep.where}: nodes {sorted(blind)} cannot read the "
                        f"bucket ({node}: {why}); give every node its credentials")


def _blind_nodes(nodes: list[dict], where: str, marker: str) -> dict[str, str]:
    """The nodes that cannot read ``marker`` in the sweep at ``where``, by name (``ray start
    --node-name``; its IP unless named), each with why."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def sees(where: str) -> str | None:
        try:
            return None if open_sweep(where).read_text(marker) else "empty"
        except Exception as e:  # noqa: BLE001 (any failure to read is the answer)
            return first_line(e)

    probes = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(where) for n in nodes]
    return {n.get("NodeName") or n["NodeManagerAddress"]: why
            for n, why in zip(nodes, ray.get(probes), strict=True) if why}


def check_fits(spec: SweepSpec) -> None:
    """Refuse a trial larger than the whole cluster (Train would wait for it forever); on an
    autoscaling cluster the total can grow, so this only refuses what no node set offers now."""
    import ray

    res = spec.resources
    total = ray.cluster_resources()
    needs = {"CPU": res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker}
    for kind, need in needs.items():
        if need > total.get(kind, 0) + 1e-9:
            raise UserError(
                f"resources: one trial needs {need:g} {kind}s ({res.workers} workers) but this "
                f"Ray cluster has {total.get(kind, 0):g}; lower resources.workers or "
                f"resources.{kind.lower()}s_per_worker")


def concurrency(spec: SweepSpec, max_concurrent: int | None) -> int:
    """Trials run at once: ``--max-concurrent``, else ``resources.max_concurrent``, else as
    many as the connected cluster holds now. Tune cannot see the Train workers' resources (each
    trial's driver asks it for memory only, sweep.experiment.DRIVER_RESOURCES), so without
    this bound it would start every trial's driver at once and their worker groups would queue
    for the same CPUs and GPUs."""
    import ray

    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent: must be ≥ 1, got {max_concurrent}")
    if max_concurrent or spec.resources.max_concurrent:
        return max_concurrent or spec.resources.max_concurrent
    total = ray.cluster_resources()
    fits = spec.resources.trials_that_fit(total.get("CPU", 0), total.get("GPU", 0))
    if fits == 0:  # an autoscaling cluster before its workers come up
        print("the cluster holds no trial yet: running one at a time; on an autoscaling "
              "cluster give the ceiling with --max-concurrent or resources.max_concurrent",
              flush=True)
    return max(1, fits)
