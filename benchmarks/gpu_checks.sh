#!/usr/bin/env bash
# GPU checks of issues 11 (items 5 and 8) and 15 (part 4), for a CUDA machine with this
# repository's .venv:
#   1. the CUDA tests (TF32 flags inside the forward passes and restored afterwards, the recorded
#      precision, a parameter-free classifier on the GPU); none may be skipped;
#   2. a quick certify of a small LeNet on the GPU, once by default and once with --allow-tf32,
#      printing the precision each run recorded in its .meta.json;
#   3. a one-GPU sweep through the embedded local Ray: the trial driver's torch backend
#      (sweep/train_loop.py) sets up the worker's process group and CUDA device on the GPU;
#   4. issue 25's packing (benchmarks/trials_per_gpu.py): 1, 2 and 4 ResNet-20 and ResNet-110
#      SmoothAdv trials (m = 4, T = 2) sharing the GPU through fractional gpus_per_worker on the
#      embedded Ray, trials per hour for each; its 4-trial sweeps are issue 25's "4 trials
#      sharing the GPU, every trial finished" (it exits 1 unless every trial is TERMINATED and
#      no Ray process is left);
#   5. issue 15's speed-ups (benchmarks/gpu_speedups.py), each with its fraction of the
#      dense-matmul peak measured in the same run (issue 25): a ResNet-110 SmoothAdv training
#      step in float32, with amp, with amp + compile; ResNet-110 seconds per image at
#      n = 100,000 with batch 400, the default batch, bf16, bf16 + compile (one image each).
# Installs nothing. Meant to finish in under 8 minutes on one H100 (estimated, not yet run on a
# GPU: about 3 for step 4, 2-4 for step 5, most of that compilation); every section prints
# the seconds since the start. Usage: bash benchmarks/gpu_checks.sh
# (PY=python3 bash benchmarks/gpu_checks.sh uses another interpreter than .venv's).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_checks: no CUDA")'
"$py" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== [${SECONDS}s] CUDA tests"
"$py" -m pytest -q -p no:cacheprovider -rs -k cuda tests/test_precision.py \
    tests/test_any_classifier.py tests/test_kernels.py | tee "$work/pytest.txt"
if grep -qi "skipped" "$work/pytest.txt"; then
    echo "gpu_checks: some CUDA tests were skipped" >&2
    exit 1
fi

echo "== [${SECONDS}s] certify a small model on the GPU"
"$py" - "$work/lenet.pt" <<'PY'
import sys

import torch
from torch import nn

from smoothadv.trainers import build_model, load_dataset, save_checkpoint

torch.manual_seed(0)
model = build_model("lenet", "synthetic").cuda()
loader = torch.utils.data.DataLoader(load_dataset("synthetic", "train"), batch_size=64,
                                     shuffle=True)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for _ in range(2):  # Gaussian augmentation, σ = 0.25
    for x, y in loader:
        x, y = x.cuda(), y.cuda()
        loss = nn.functional.cross_entropy(model(x + 0.25 * torch.randn_like(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
save_checkpoint(sys.argv[1], model, arch="lenet", dataset="synthetic")
PY
for flag in "" "--allow-tf32"; do
    out="$work/certify${flag:+_tf32}.tsv"
    "$py" -m smoothadv.cli.main certify "$work/lenet.pt" --sigma 0.25 --n0 100 --n 10000 --batch 1000 \
        --skip 16 --device cuda --out "$out" --no-progress $flag
    "$py" -c 'import json, sys; print(sys.argv[2], "-> recorded precision:",
                                     json.load(open(sys.argv[1]))["precision"])' \
        "$out.meta.json" "certify ${flag:-(no flag)}"
done
out="$work/certify_default_batch.tsv"  # the default batch on CUDA (4,096)
"$py" -m smoothadv.cli.main certify "$work/lenet.pt" --sigma 0.25 --n0 100 --n 10000 --skip 16 \
    --device cuda --out "$out" --no-progress
echo "== [${SECONDS}s] a one-GPU sweep (device auto: the worker's CUDA device from Ray Train)"
cat > "$work/gpu_sweep.yaml" <<'YAML'
name: gpu
defaults: {dataset: synthetic, arch: lenet, train_subset: 256, epoch_test_subset: 64, epochs: 2,
           batch_size: 64, steps: 1, epsilon: 0.25, device: auto,
           certify: {n0: 16, n: 1000, batch_size: 500, skip: 8}}
resources: {workers: 1, gpus_per_worker: 1, cpus_per_worker: 2}
grid: {attack: [pgd], sigma: [0.25]}
YAML
"$py" -m smoothadv.cli.main sweep run "$work/gpu_sweep.yaml" --storage "$work/sweeps" --verbose 0
"$py" -m smoothadv.cli.main sweep status "$work/sweeps/gpu"
grep -q '"device": "cuda' "$work/sweeps/gpu/trials/pgd-sigma0.25/config.yaml" 2>/dev/null \
  || grep -q 'device: cuda' "$work/sweeps/gpu/trials/pgd-sigma0.25/config.yaml"
echo "== [${SECONDS}s] trials per GPU: 1, 2, 4 trials sharing it (issue 25)"
"$py" benchmarks/trials_per_gpu.py --device cuda --archs cifar_resnet20,cifar_resnet110 \
    --packs 1,2,4 --epochs 4 --timeout 150
echo "== [${SECONDS}s] speed-ups with their fraction of peak (issues 15, 25)"
"$py" benchmarks/gpu_speedups.py --device cuda --images 1
echo "gpu_checks: all passed in ${SECONDS}s"
