# smoothadv with a CUDA PyTorch on Ray: the image of cluster/rayjob.yaml (KubeRay) and of
# cluster/ray-cluster.yaml (`ray up`, its `docker:` image). Ray comes with the official Ray
# image and smoothadv is installed into that same Python, so `ray start`, the autoscaler, Ray
# Train's workers and `smoothadv` all use one Ray. Build from the repository root and push it
# where the cluster pulls from:
#
#   docker build -t registry.example.org/smoothadv:0.1.0 .
#   docker push registry.example.org/smoothadv:0.1.0
#
# The versions are those the tests run with (Makefile's TORCH_PIN, pyproject's Ray pin);
# tests/test_launch_files.py checks that they agree. CUDA picks both the base image's variant
# and PyTorch's wheel index (the wheels bring their own CUDA runtime: nodes need only an NVIDIA
# driver recent enough for it).
ARG RAY_VERSION=2.60.0
ARG CUDA=cu128
FROM rayproject/ray:${RAY_VERSION}-py311-${CUDA}

ARG RAY_VERSION
ARG CUDA
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# PyTorch's CUDA build from PyTorch's own index (PyPI's default wheel may target another CUDA).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        --index-url "https://download.pytorch.org/whl/${CUDA}"

# smoothadv into the same environment, Ray held at the base image's release and torch at the
# CUDA build above (pip may change neither), plus boto3: the AWS SDK that `ray up`'s
# autoscaler, running on the head node in this image, launches worker instances with.
COPY --chown=ray:users . /home/ray/smoothadv
RUN pip install --no-cache-dir /home/ray/smoothadv "ray[default,train,tune]==${RAY_VERSION}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" boto3 \
    && python -c "import ray, torch; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
assert torch.version.cuda, 'a CPU-only torch was installed'; \
print('ray', ray.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda)" \
    && smoothadv sweep presets

# Datasets are read from SMOOTHADV_DATA (mount shared storage there, e.g. /shared/data).
ENV SMOOTHADV_DATA=/shared/data
