"""Names the configs validate against, without torch: datasets (shape, classes, normalisation)
and architectures. ``trainers.models`` builds each architecture named here (a test checks they
agree), so ``sweep status`` and ``sweep plan`` start in well under a second.

Besides the built-in names, ``arch`` and ``dataset`` take an import path ``module.path:name``
(a user's own architecture or dataset, plugged in without editing this package):

* ``arch: mypkg.models:wrn28_10`` names a callable ``builder(info: DatasetInfo) -> nn.Module``,
  the signature of the built-in builders in ``trainers.models``: it sizes the network from
  ``info.num_classes`` and ``info.input_shape`` (C, H, W) and returns logits for [0,1]
  pixels already normalized, since ``build_model`` puts the dataset's ``NormalizeLayer`` in
  front of it as for every built-in. Fine-tuning with ``reinit_head`` needs the final
  ``nn.Linear`` to be the attribute ``fc``.
* ``dataset: mypkg.data:my_digits`` names a dataset factory, called as
  ``factory(split, data_root, download=..., augment=...)`` (``split`` is 'train' or 'test';
  ``data_root`` the config's ``data_root``, possibly None) and returning a torch Dataset of
  ``(image, label)`` pairs: ``image`` a float32 C×H×W tensor of [0,1] pixels, ``label`` an int
  in [0, num_classes). The factory object carries the metadata as attributes, read without
  loading any data: ``num_classes`` (int), ``input_shape`` ((C, H, W)), ``mean`` and ``std``
  (one float per channel). A Dataset subclass with these class attributes is such a factory.

The module must be importable where the trial runs (installed, or its folder on PYTHONPATH).
A checkpoint records the import path as its ``arch``/``dataset``, so ``smoothadv certify``
rebuilds the model and reloads the data through the same callables, but only when the user
names that path (``--arch``/``--dataset``, or the trial config that resumes or fine-tunes from
it): importing and calling it runs code, which a checkpoint alone never may
(trainers.checkpoint.check_trusted refuses it, before any import). A path whose module or
attribute is missing, or which is not callable, is a one-line UserError naming the key, raised
when the config is validated.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smoothadv.common.errors import UserError

ARCH_NAMES = ("cifar_resnet20", "cifar_resnet110", "resnet50", "lenet")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    input_shape: tuple[int, int, int]  # C, H, W as the model sees it
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", (3, 32, 32), 10, CIFAR10_MEAN, CIFAR10_STD),
        DatasetInfo("imagenet", (3, 224, 224), 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        # ImageNet-32 takes CIFAR-10's statistics, as in the SmoothAdv reference's pre-training,
        # so a model fine-tuned on CIFAR-10 sees its inputs normalized exactly as before.
        DatasetInfo("imagenet32", (3, 32, 32), 1000, CIFAR10_MEAN, CIFAR10_STD),
        DatasetInfo("fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
        # MNIST, CIFAR-100, SVHN: per-channel mean and standard deviation of the training
        # split's [0,1] pixels, as commonly quoted (MNIST's from PyTorch's MNIST example; the
        # data are not in this repository, so they are not recomputed here).
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
        DatasetInfo("cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762)),
        DatasetInfo("svhn", (3, 32, 32), 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
        DatasetInfo("synthetic", (1, 16, 16), 4, (0.5,), (0.25,)),
    )
}


def is_import_path(name: str) -> bool:
    """Whether an ``arch`` or ``dataset`` value names a user's callable (``module:name``)."""
    return ":" in name


def resolve_import_path(key: str, path: str) -> Callable[..., Any]:
    """The callable ``module.path:name`` names (``name`` may be dotted); a bad path is a
    one-line UserError naming ``key`` and ``path``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        raise UserError(f"{key}: {path!r} is not an import path 'module.path:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{key}: cannot import module {module_name!r} of {path!r} "
                        f"({type(e).__name__}: {first})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{key}: module {module_name!r} has no attribute {attr!r} "
                            f"(import path {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{key}: {path!r} is a {type(obj).__name__}, not callable")
    return obj


def _plugin_dataset_info(path: str) -> DatasetInfo:
    """DatasetInfo from a dataset factory's attributes (see the module docstring)."""
    factory = resolve_import_path("dataset", path)
    values = {}
    for attr in ("num_classes", "input_shape", "mean", "std"):
        if not hasattr(factory, attr):
            raise UserError(f"dataset: {path!r} lacks attribute {attr!r} (a dataset factory "
                            "carries num_classes, input_shape, mean and std)")
        values[attr] = getattr(factory, attr)
    try:
        num_classes = int(values["num_classes"])
        shape = tuple(int(v) for v in values["input_shape"])
        mean = tuple(float(v) for v in values["mean"])
        std = tuple(float(v) for v in values["std"])
    except (TypeError, ValueError) as e:
        raise UserError(f"dataset: {path!r} has malformed metadata ({e})") from None
    ok = (num_classes >= 1 and len(shape) == 3 and min(shape) >= 1
          and len(mean) == len(std) == shape[0] and min(std) > 0)
    if not ok:
        raise UserError(f"dataset: {path!r} needs num_classes ≥ 1, input_shape (C, H, W) and "
                        f"C means and C positive stds; got num_classes={num_classes}, "
                        f"input_shape={shape}, mean={mean}, std={std}")
    return DatasetInfo(path, shape, num_classes, mean, std)  # type: ignore[arg-type]


def check_arch(name: str) -> None:
    """A built-in architecture name, or an import path resolving to a callable."""
    if is_import_path(name):
        resolve_import_path("arch", name)
    elif name not in ARCH_NAMES:
        raise UserError(f"arch: unknown {name!r}; one of {sorted(ARCH_NAMES)} or an import "
                        "path 'module.path:builder'")


def dataset_info(name: str) -> DatasetInfo:
    if is_import_path(name):
        return _plugin_dataset_info(name)
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(
            f"dataset: unknown dataset {name!r}; expected one of {sorted(DATASETS)} or an "
            "import path 'module.path:factory'"
        ) from None
