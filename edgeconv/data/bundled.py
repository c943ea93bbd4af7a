"""Bundled data sets, named by a bare `--data NAME`: each is one row of `BUNDLED_SETS`.

- `digits`: scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn), upsampled; a seeded stratified
  70 / 10 / 20 % train / val / test split. Fast: the demo and quick tests use it.
- `fashion`: Fashion-MNIST, 70,000 28x28 grey photos of clothing in 10 classes, read from the files of Debian's
  `dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist`, or the folder in `EDGECONV_FASHION_DIR`).
  Splits, fixed: `test` is the 10,000 images of the t10k files; the 60,000 of the train files are split by a
  seeded stratified draw (seed 0) into `train` (55,000) and `val` (5,000, 500 per class).

Images come as [N, 1, size, size] in [0, 1] (bilinear resize from the native size); a 3-channel model gets the grey
channel repeated. Each set's mean and std were measured on its train split (`tests/test_data.py` re-measures them).
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgeconv.common.errors import EdgeconvError

FASHION_DIR_ENV = "EDGECONV_FASHION_DIR"
FASHION_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip
FASHION_VAL_PER_CLASS = 500


@dataclass(frozen=True)
class BundledSet:
    name: str
    classes: tuple[str, ...]
    mean: float  # of the train split's pixels in [0, 1]
    std: float
    default_size: int  # what a model trained on it gets without --img-size
    raw: Callable[[str], tuple[np.ndarray, np.ndarray]]  # split -> (images [N, H, W] in [0, 1] or uint8, labels)
    fingerprint: Callable[[], str]  # what identifies the contents (for caching)
    description: str

    def preprocessing(self, size: int | None = None) -> dict:
        return {
            "size": int(size or self.default_size),
            "channels": 1,
            "mean": [self.mean],
            "std": [self.std],
            "layout": "NCHW",
            "pixel_range": "[0,1] before normalisation",
            "dataset": self.name,
        }

    def images01(self, split: str, size: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """One split (train | val | test | all) as [N, channels, size, size] in [0, 1] and labels [N]."""
        parts = ("train", "val", "test") if split == "all" else (split,)
        xs, ys = [], []
        for part in parts:
            images, labels = self.raw(part)
            xs.append(_resize01(images, size))
            ys.append(torch.from_numpy(labels.astype(np.int64)))
        x = torch.cat(xs) if len(xs) > 1 else xs[0]
        if channels != 1:
            x = x.expand(-1, channels, -1, -1).contiguous()
        return x, torch.cat(ys) if len(ys) > 1 else ys[0]


def _resize01(images: np.ndarray, size: int, chunk: int = 4096) -> torch.Tensor:
    """[N, H, W] (uint8 or [0, 1] floats) -> [N, 1, size, size] float32 in [0, 1], resized in chunks."""
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    out = torch.empty(len(images), 1, size, size)
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i : i + chunk].astype(np.float32) / scale).unsqueeze(1)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        out[i : i + len(x)] = x
    return out


# ------------------------------------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def digits_split_indices(n_labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic stratified split: 70% train, 10% val, 20% test, the same on every machine."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(n_labels):
        idx = np.flatnonzero(n_labels == c)
        rng.shuffle(idx)
        n_test = int(round(0.2 * len(idx)))
        n_val = int(round(0.1 * len(idx)))
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test : n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val :].tolist()
    return {k: np.sort(np.array(v)) for k, v in parts.items()}


def _digits_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _digits_all()
    idx = digits_split_indices(labels)[split]
    return images[idx], labels[idx]


def _digits_fingerprint() -> str:
    import sklearn

    return f"sklearn-{sklearn.__version__}"


# ------------------------------------------------------------------------------------------------------ fashion
def fashion_dir() -> Path:
    return Path(os.environ.get(FASHION_DIR_ENV) or FASHION_DEFAULT_DIR)


def _fashion_path(name: str) -> Path:
    p = fashion_dir() / name
    if not p.is_file():
        raise EdgeconvError(
            f"--data fashion: Fashion-MNIST is not installed ({p} is missing): apt-get install "
            f"dataset-fashion-mnist (Debian), or set {FASHION_DIR_ENV} to a folder holding its four idx-ubyte.gz files"
        )
    return p


def _read_idx(path: Path, offset: int, count_shape: tuple[int, ...]) -> np.ndarray:
    try:
        data = gzip.open(path).read()
    except (OSError, EOFError) as e:
        raise EdgeconvError(f"{path}: unreadable Fashion-MNIST file ({type(e).__name__}: {e})") from None
    arr = np.frombuffer(data, np.uint8, offset=offset)
    n = int(np.prod(count_shape[1:])) if len(count_shape) > 1 else 1
    if len(arr) % n:
        raise EdgeconvError(f"{path}: truncated Fashion-MNIST file ({len(arr)} bytes after the header)")
    return arr.reshape(-1, *count_shape[1:])


@functools.lru_cache(maxsize=2)
def _fashion_file(part: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = FASHION_FILES[part]
    images = _read_idx(_fashion_path(img_name), 16, (-1, 28, 28))
    labels = _read_idx(_fashion_path(lbl_name), 8, (-1,)).astype(np.int64)
    if len(images) != len(labels) or labels.max(initial=0) >= len(FASHION_CLASSES):
        raise EdgeconvError(f"{fashion_dir()}: {part} images and labels do not match ({len(images)} vs {len(labels)})")
    return images, labels


def fashion_split_indices(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The fixed train / val split of the 60,000 train-file images: 500 per class to val, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    val = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:FASHION_VAL_PER_CLASS] for c in range(len(FASHION_CLASSES))]
    )
    mask = np.zeros(len(labels), bool)
    mask[val] = True
    return {"train": np.flatnonzero(~mask), "val": np.flatnonzero(mask)}


def _fashion_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    if split == "test":
        return _fashion_file("test")
    images, labels = _fashion_file("train")
    idx = fashion_split_indices(labels)[split]
    return images[idx], labels[idx]


def _fashion_fingerprint() -> str:
    sizes = [
        (fashion_dir() / n).stat().st_size for pair in FASHION_FILES.values() for n in pair if (fashion_dir() / n).exists()
    ]
    return f"fashion-mnist-{'-'.join(map(str, sizes))}"


BUNDLED_SETS: dict[str, BundledSet] = {
    s.name: s
    for s in (
        BundledSet(
            "digits", tuple(str(i) for i in range(10)), 0.3, 0.32, 32, _digits_raw, _digits_fingerprint,
            "scikit-learn's 1,797 8x8 handwritten digits (70/10/20 % split)",
        ),
        BundledSet(
            "fashion", FASHION_CLASSES, 0.2860, 0.3530, 32, _fashion_raw, _fashion_fingerprint,
            "Fashion-MNIST from Debian's dataset-fashion-mnist (55,000 / 5,000 / 10,000)",
        ),
    )
}  # fmt: skip


def bundled(name: str) -> BundledSet:
    if name not in BUNDLED_SETS:
        raise EdgeconvError(f"no bundled data set {name!r} (known: {', '.join(BUNDLED_SETS)})")
    return BUNDLED_SETS[name]
