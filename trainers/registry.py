"""Names the configs validate against, without torch: datasets (shape, classes, normalisation)
and architectures. ``trainers.models`` builds each architecture named here (a test checks they
agree), so ``sweep status`` and ``sweep plan`` start in well under a second."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.errors import UserError

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
        DatasetInfo("synthetic", (1, 16, 16), 4, (0.5,), (0.25,)),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(
            f"dataset: unknown dataset {name!r}; expected one of {sorted(DATASETS)}"
        ) from None
