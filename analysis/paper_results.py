"""Facts the report compares against: the paper's table radii, published certified accuracies
(Tables 1–2 of Salman et al. 2019, which also quote Cohen et al. 2019) and input dimensions.
"""

from __future__ import annotations

import math

from smoothadv.common.errors import UserError

# ℓ2 radii of the paper's Table 2 (CIFAR-10) and Table 1 (ImageNet).
PAPER_RADII: dict[str, tuple[float, ...]] = {
    "cifar10": (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25),
    "imagenet": (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5),
}

# Published certified accuracies as fractions, one value per PAPER_RADII entry.
PUBLISHED: dict[str, dict[str, tuple[str, tuple[float, ...]]]] = {
    "cifar10": {
        "cohen": ("Cohen et al. (published)",
                  (0.61, 0.43, 0.32, 0.22, 0.17, 0.13, 0.10, 0.07, 0.04)),
        "smoothadv": ("SmoothAdv (published)",
                      (0.73, 0.58, 0.48, 0.38, 0.33, 0.29, 0.24, 0.18, 0.16)),
        "smoothadv_both": ("SmoothAdv + pre-training + semi-supervision (published)",
                           (0.81, 0.63, 0.52, 0.37, 0.33, 0.29, 0.25, 0.18, 0.16)),
    },
    "imagenet": {
        "cohen": ("Cohen et al. (published)", (0.49, 0.37, 0.29, 0.19, 0.15, 0.12, 0.09)),
        "smoothadv": ("SmoothAdv (published)", (0.56, 0.45, 0.38, 0.28, 0.26, 0.20, 0.17)),
    },
}
REFERENCE_NAMES = ("cohen", "smoothadv", "smoothadv_both")

# d = C·H·W of the inputs the models see (trainers/datasets.py).
INPUT_DIM: dict[str, int] = {
    "cifar10": 3 * 32 * 32,
    "imagenet": 3 * 224 * 224,
    "imagenet32": 3 * 32 * 32,
    "fashion_mnist": 28 * 28,
    "synthetic": 16 * 16,
}

# ℓ∞ radii (in [0,1] pixel units) of the ℓ∞ table; the paper quotes 2/255 (CIFAR-10, Table 3)
# and 1/255 (ImageNet, Appendix F).
LINF_RADII_255: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def l2_radius_for_linf(linf_radius: float, dataset: str) -> float:
    """ℓ2 radius whose certificate covers the ℓ∞ ball of ``linf_radius``: ‖δ‖₂ ≤ √d·‖δ‖∞, so
    an ℓ2 certificate of radius r covers ℓ∞ radius r/√d (CIFAR-10, 2/255: 0.435)."""
    return linf_radius * math.sqrt(INPUT_DIM[dataset])


def parse_references(text: str | None) -> tuple[str, ...]:
    """``cohen,smoothadv`` → ("cohen", "smoothadv"); unknown names are a UserError."""
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in REFERENCE_NAMES:
            raise UserError(f"--reference: unknown row {name!r}; expected a comma-separated "
                            f"subset of {','.join(REFERENCE_NAMES)}")
    return names


Row = tuple[str, tuple[float, ...], tuple[float, ...]]  # label, radii, accuracies


def published_rows(dataset: str | None, names: tuple[str, ...]) -> list[Row]:
    """(label, radii, accuracies) of each asked-for published row that exists for ``dataset``."""
    rows = PUBLISHED.get(dataset or "", {})
    return [(rows[n][0], PAPER_RADII[dataset], rows[n][1]) for n in names if n in rows]
