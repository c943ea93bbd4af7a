"""Image folders as users have them, streamed through a `torch.utils.data.DataLoader` with worker processes.

Two layouts are understood:

- the ImageNet layout, `ROOT/train/<class>/*` and `ROOT/val/<class>/*` (and optionally `ROOT/test/<class>/*`): the
  split a step asks for is a subfolder (`test` falls back to `val` when there is no `test/`, `all` is every split);
- a flat class tree, `ROOT/<class>/*` (two or more class folders, no loose images): a seeded split, per class,
  of `holdout` (default 20 %) of the files into the held-out part (`val` and `test`) and the rest into `train`.
  Each file's side is decided by ranking a hash of (seed, its path below ROOT) within its class, so the split is
  the same on every machine and a file added later moves at most one other file of its class
  (`edgeconv --split-seed N --holdout F`);
- a folder of unlabelled images (for calibration): one unsplit set.

Images of any size are turned into the model's input by its preprocessing: shorter side resized to
`size / crop_pct` with the recorded interpolation, then a centre crop of `size` (an image already `size x size`
with `crop_pct` 1 is passed through untouched); channels are converted to the model's (L or RGB). Training adds a
random resized crop. Only the file list is held in memory; pixels are decoded by the loader's workers batch by batch.

Unreadable or truncated files are counted and listed (`FolderSamples.skipped`) and skipped, or are fatal with
`configure(bad_images="fail")` (`edgeconv --bad-images fail ...`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgeconv.common.errors import EdgeconvError
from edgeconv.common.settings import BAD_IMAGES, INTERPOLATIONS, SETTINGS, LoaderSettings, configure  # noqa: F401 - re-exported

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
SPLIT_DIRS = ("train", "val", "test")
MEMORY_LIMIT_BYTES = 2 << 30  # a step that holds a folder in memory refuses one whose tensors would exceed this
TRAIN_SCALE = (0.35, 1.0)  # random resized crop: area fraction and aspect ratio range for training
TRAIN_RATIO = (3 / 4, 4 / 3)


# ------------------------------------------------------------------------------------------------------ the file index
def is_split_layout(root: Path) -> bool:
    """True for the ImageNet layout: a `train/` folder and a `val/` or `test/` folder beside it, or split folders
    alone (only `val/`, only `test/`, ...: nothing else but hidden entries at the top level), each read as that
    split."""
    present = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if not present:
        return False
    if "train" in present and len(present) >= 2:
        return True
    try:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except OSError:
        return False
    return all(e.is_dir() and e.name in SPLIT_DIRS for e in entries)


def is_class_tree(root: Path) -> bool:
    """True for a flat class tree: two or more class folders and no loose images beside them (top level only)."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return False
    dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    return len(dirs) >= 2 and not loose


def has_split(root: Path) -> bool:
    """Whether a folder has held-out files: the ImageNet layout, or a flat class tree (seeded split)."""
    return is_split_layout(root) or is_class_tree(root)


def held_out_mask(rel_paths: list[str], labels: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    """The seeded split of a flat class tree: True for held-out files. Within each class the files are ranked by
    sha256(seed, relative path) and the first round(holdout * n) are held out (none of a one-file class)."""
    keys = np.array([hashlib.sha256(f"{seed}\0{p}".encode()).hexdigest() for p in rel_paths])
    mask = np.zeros(len(rel_paths), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(int(round(holdout * len(idx))), len(idx) - 1)  # every class keeps a training file
        mask[idx[np.argsort(keys[idx], kind="stable")[:k]]] = True
    return mask


def _walk_images(root: Path) -> list[tuple[str, int]]:
    """(path, size in bytes) of every image under root, sorted by path; symlinked folders are not followed."""
    out: list[tuple[str, int]] = []
    stack = [str(root)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                        out.append((e.path, e.stat().st_size))
        except OSError as err:
            raise EdgeconvError(f"{d}: cannot list the folder ({err.strerror or err})") from None
    out.sort()
    return out


@dataclass
class FolderIndex:
    """The file list of one split: paths, labels (index into `classes`, -1 unlabelled), byte sizes."""

    root: Path
    split: str
    files: list[str]
    labels: np.ndarray
    sizes: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def sha256(self) -> str:
        """Hash of the file list: paths relative to the root, labels and byte sizes, in order."""
        h = hashlib.sha256()
        root = str(self.root)
        for f, y, s in zip(self.files, self.labels.tolist(), self.sizes.tolist()):
            h.update(f"{os.path.relpath(f, root)}\t{y}\t{s}\n".encode())
        return h.hexdigest()

    def subset(self, idx: np.ndarray) -> "FolderIndex":
        idx = np.asarray(idx, dtype=np.int64)
        return FolderIndex(
            self.root, self.split, [self.files[i] for i in idx], self.labels[idx], self.sizes[idx], self.classes
        )

    def stratified(self, n: int, seed: int = 0) -> "FolderIndex":
        """A seeded subset of at most n files with every class in proportion (largest remainders), in file order."""
        return self if n >= len(self) else self.subset(stratified_indices(self.labels, n, seed))


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of a seeded subset of n labels with every label value in proportion (largest remainders)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    quota = np.array([n * len(g) / len(labels) for g in groups])
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    return np.sort(np.concatenate([rng.permutation(g)[:k] for g, k in zip(groups, take)]))


DEFAULT_HOLDOUT, DEFAULT_SPLIT_SEED = 0.2, 0


def split_rule(pre: dict | None = None, loader: LoaderSettings | None = None) -> tuple[float, int]:
    """(holdout, seed) of a class tree's split: the loader options' (the command line's), else the one `pre`
    recorded, else the defaults, so a model evaluated on the tree it was trained on is scored on the files it did
    not see."""
    opts = loader if loader is not None else SETTINGS
    rec = (pre or {}).get("split_rule") or {}
    holdout = opts.holdout if opts.holdout is not None else rec.get("holdout", DEFAULT_HOLDOUT)
    seed = opts.split_seed if opts.split_seed is not None else rec.get("seed", DEFAULT_SPLIT_SEED)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise EdgeconvError(f"recorded split holdout {holdout!r} is not a fraction in (0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise EdgeconvError(f"recorded split seed {seed!r} is not an integer in [0, 2**32)")
    return float(holdout), int(seed)


def split_record(data: str) -> dict:
    """What a model trained on `data` records about its split ({} unless `data` is a flat class tree)."""
    from edgeconv.data.spec import DataSpec

    spec = DataSpec.parse(data)
    if spec.kind != "imagefolder":
        return {}
    root = spec.path
    if is_split_layout(root) or not is_class_tree(root):
        return {}
    holdout, seed = split_rule(loader=spec.loader)
    return {"split_rule": {"holdout": holdout, "seed": seed}}


def scan(
    root: Path, split: str = "all", classes: list[str] | None = None, rule: tuple[float, int] | None = None
) -> FolderIndex:
    """Index `root` for `split` (train | val | test | all); see the module docstring for the layouts."""
    if not str(root) or str(root) == ".":
        raise EdgeconvError("imagefolder: needs a folder, e.g. imagefolder:data/pets")
    if not root.exists():
        raise EdgeconvError(f"no such folder: {root}")
    if not root.is_dir():
        raise EdgeconvError(f"{root} is not a folder of images")
    if is_split_layout(root):
        if split == "all":
            parts = [s for s in SPLIT_DIRS if (root / s).is_dir()]
        elif split == "test" and not (root / "test").is_dir() and (root / "val").is_dir():
            parts = ["val"]
        elif (root / split).is_dir():
            parts = [split]
        else:
            raise EdgeconvError(
                f"{root}: has no {split}/ folder (found: {', '.join(s for s in SPLIT_DIRS if (root / s).is_dir())})"
            )
        found = [(_walk_images(root / p), root / p) for p in parts]
    else:
        found = [(_walk_images(root), root)]
    entries = [(f, s, base) for files, base in found for f, s in files]
    if not entries:
        raise EdgeconvError(f"{root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")

    def class_of(path: str, base: Path) -> str | None:
        rel = os.path.relpath(path, base).split(os.sep)
        return rel[0] if len(rel) > 1 else None

    names = [class_of(f, base) for f, _, base in entries]
    class_dirs = sorted({c for c in names if c is not None})
    if classes is not None and class_dirs:
        unknown = [c for c in class_dirs if c not in classes]
        if unknown:
            known = ", ".join(classes[:20])
            raise EdgeconvError(
                f"{root}: class folder(s) {', '.join(unknown[:5])} are not among the model's classes ({known})"
            )
    classes = list(classes) if classes is not None else class_dirs
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[c] if c is not None and class_dirs else -1 for c in names], dtype=np.int64)
    index = FolderIndex(
        root,
        split if is_split_layout(root) else "all",
        [f for f, _, _ in entries],
        labels,
        np.array([s for _, s, _ in entries], dtype=np.int64),
        classes,
    )
    if split == "all" or is_split_layout(root) or not is_class_tree(root):
        return index
    if split not in SPLIT_DIRS:
        raise EdgeconvError(f"unknown split {split!r} (expected one of {', '.join(SPLIT_DIRS)}, all)")
    holdout, seed = rule or split_rule()
    held = held_out_mask([os.path.relpath(f, root) for f in index.files], labels, holdout, seed)
    part = index.subset(np.flatnonzero(~held if split == "train" else held))
    part.split = f"{split}: seeded split, holdout {holdout:g}, seed {seed}"
    if not len(part):
        raise EdgeconvError(f"{root}: the seeded split left no files in {split} (too few images per class)")
    return part


# ---------------------------------------------------------------------------------------------------------- transforms
def _mode_for(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise EdgeconvError(f"image folders give 1- or 3-channel inputs; the model expects {channels}")


def _resample(pre: dict) -> int:
    name = str(pre.get("interpolation", "bilinear"))
    if name not in INTERPOLATIONS:
        raise EdgeconvError(f"preprocessing interpolation {name!r} is not one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


def eval_geometry(w: int, h: int, pre: dict) -> tuple[tuple[int, int] | None, tuple[int, int, int, int]]:
    """(resize to (w, h) or None, crop box) for evaluation: shorter side to size/crop_pct, centre crop of size."""
    size = int(pre["size"])
    crop_pct = float(pre.get("crop_pct", 1.0))
    if (w, h) == (size, size) and crop_pct == 1.0:
        return None, (0, 0, size, size)
    short = max(size, int(round(size / crop_pct)))
    nw, nh = (short, max(short, int(round(h * short / w)))) if w <= h else (max(short, int(round(w * short / h))), short)
    left, top = (nw - size) // 2, (nh - size) // 2
    return (nw, nh), (left, top, left + size, top + size)


def train_box(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random resized crop box (area in TRAIN_SCALE, log-uniform aspect ratio in TRAIN_RATIO) inside w x h."""
    area = w * h
    for _ in range(10):
        a = area * rng.uniform(*TRAIN_SCALE)
        r = float(np.exp(rng.uniform(np.log(TRAIN_RATIO[0]), np.log(TRAIN_RATIO[1]))))
        cw, ch = int(round((a * r) ** 0.5)), int(round((a / r) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return x0, y0, x0 + cw, y0 + ch
    s = min(w, h)  # fall back to the centre square
    return (w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s


def decode01(path: str, pre: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """One image as float32 [C, size, size] in [0, 1]: evaluation geometry without `rng`, a random resized crop
    with it (training). Raises Pillow's own errors for unreadable files."""
    from PIL import Image

    size = int(pre["size"])
    with Image.open(path) as im:
        im.load()  # a truncated file fails here, not later
        if im.mode in ("RGBA", "LA", "P") and _mode_for(pre["channels"]) == "RGB":
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        im = im.convert(_mode_for(pre["channels"]))
        w, h = im.size
        if rng is None:
            resize, box = eval_geometry(w, h, pre)
            if resize is not None:
                im = im.resize(resize, _resample(pre))
            if box != (0, 0, im.size[0], im.size[1]):
                im = im.crop(box)
        else:
            im = im.resize((size, size), _resample(pre), box=train_box(w, h, rng))
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def read_image(path: str, pre: dict, rng: np.random.Generator | None = None) -> np.ndarray:
    """`decode01`, normalised by the preprocessing's mean/std."""
    arr = decode01(path, pre, rng)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)


def read_image01(path: Path, pre: dict) -> torch.Tensor:
    """One image file as [C, H, W] in [0, 1] by the evaluation geometry; an unreadable file is an EdgeconvError."""
    from PIL import UnidentifiedImageError

    _mode_for(int(pre["channels"]))
    try:
        return torch.from_numpy(decode01(str(path), pre))
    except UnidentifiedImageError:
        raise EdgeconvError(f"{path}: unreadable image (not an image format Pillow recognises)") from None
    except EdgeconvError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for broken files
        raise EdgeconvError(f"{path}: unreadable image ({e.__class__.__name__}: {str(e)[:120]})") from None


class ImageDataset(torch.utils.data.Dataset):
    """Items (x [C,H,W], label, index, error text or ""): a file that cannot be read gives zeros and its error, so
    one broken JPEG never stops a worker; the consumer counts, lists and drops it."""

    def __init__(self, index: FolderIndex, pre: dict, train: bool = False, seed: int = 0):
        self.files, self.labels, self.pre = index.files, index.labels, pre
        self.train, self.seed, self.epoch = train, seed, 0
        self.shape = (int(pre["channels"]), int(pre["size"]), int(pre["size"]))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.seed, self.epoch, int(i))) if self.train else None
        try:
            x, err = torch.from_numpy(read_image(self.files[i], self.pre, rng)), ""
        except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for broken files
            x, err = torch.zeros(self.shape), f"{type(e).__name__}: {str(e)[:160]}" or type(e).__name__
        return x, int(self.labels[i]), int(i), err


TRIM_EVERY = 1  # batches (measured: every 16 left eval's peak RSS 1.19x from 20k to 80k files; every batch, flat)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim; no-op elsewhere).

    Called every TRIM_EVERY batches while streaming (no measurable cost in throughput): glibc raises its mmap
    threshold after the first large free, so batch-sized tensors come from the heap, where the small results kept
    between them stop it from shrinking, and memory would grow with the number of files."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


# ------------------------------------------------------------------------------------------------------------ samples
@dataclass
class FolderSamples:
    """A streamed image folder with the in-memory `Samples` interface: `batches`, `y`, `classes`, `fingerprint`, and
    `x` (decoded once on first use, refused above MEMORY_LIMIT_BYTES)."""

    index: FolderIndex
    pre: dict
    source: str
    options: LoaderSettings = field(default_factory=LoaderSettings)  # workers, unreadable files (from the spec)
    skipped: dict[str, str] = field(default_factory=dict)
    _x: torch.Tensor | None = None
    _y: torch.Tensor | None = None
    images_per_s: float | None = None

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    def __len__(self) -> int:
        return len(self.index) if self._y is None else len(self._y)

    @property
    def y(self) -> torch.Tensor:
        return self._y if self._y is not None else torch.from_numpy(self.index.labels)

    def fingerprint(self) -> str:
        return self.index.sha256()

    def take(self, n: int) -> "FolderSamples":
        return FolderSamples(self.index.subset(np.arange(min(n, len(self.index)))), self.pre, self.source, self.options)

    def stratified(self, n: int, seed: int = 0) -> "FolderSamples":
        return FolderSamples(self.index.stratified(n, seed), self.pre, self.source, self.options)

    def _note_bad(self, path: str, err: str) -> None:
        if self.options.bad_images == "fail":
            raise EdgeconvError(f"{path}: unreadable image ({err}); --bad-images skip counts and skips such files")
        self.skipped[path] = err

    def nothing_readable(self, where: str) -> EdgeconvError:
        """The error for a set in which every file was unreadable, naming one of them."""
        path, err = next(iter(self.skipped.items()))
        return EdgeconvError(f"{where}: no readable images ({len(self.skipped)} unreadable, e.g. {path}: {err})")

    def loader(self, batch_size: int, *, train: bool = False, seed: int = 0, epoch: int = 0, sampler=None, workers=None):
        """The DataLoader over this folder (workers decode; a training loader draws random crops per epoch)."""
        ds = ImageDataset(self.index, self.pre, train=train, seed=seed)
        ds.epoch = epoch
        n = self.options.worker_count() if workers is None else workers
        return torch.utils.data.DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=n,
            persistent_workers=False,
            prefetch_factor=4 if n else None,
        )

    def clean(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop (and record) the unreadable items of one loader batch."""
        x, y, idx, errs = batch
        bad = [j for j, e in enumerate(errs) if e]
        if not bad:
            return x, y
        for j in bad:
            self._note_bad(self.index.files[int(idx[j])], errs[j])
        keep = torch.tensor([j for j in range(len(errs)) if not errs[j]], dtype=torch.int64)
        return x[keep], y[keep]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        import time

        if self._x is not None:
            for i in range(0, len(self._x), batch_size):
                yield self._x[i : i + batch_size], self._y[i : i + batch_size]
            return
        t0, n = time.perf_counter(), 0
        for i, batch in enumerate(self.loader(batch_size)):
            if i % TRIM_EVERY == TRIM_EVERY - 1:
                trim_heap()
            x, y = self.clean(batch)
            n += len(y)
            if len(y):
                yield x, y
        self.images_per_s = n / max(time.perf_counter() - t0, 1e-9)

    @property
    def x(self) -> torch.Tensor:
        if self._x is None:
            c, s = int(self.pre["channels"]), int(self.pre["size"])
            need = len(self.index) * c * s * s * 4
            if need > MEMORY_LIMIT_BYTES:
                raise EdgeconvError(
                    f"{self.source}: {len(self.index)} images at {c}x{s}x{s} need {need / 2**30:.1f} GiB in memory, "
                    f"more than this step holds ({MEMORY_LIMIT_BYTES / 2**30:.0f} GiB); pass a limit (--limit / "
                    "--calib-limit) or a smaller folder"
                )
            xs, ys = [], []
            for x, y in self.batches(256):
                xs.append(x)
                ys.append(y)
            c_s = (0, c, s, s)
            self._x = torch.cat(xs) if xs else torch.zeros(c_s)
            self._y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
        return self._x

    def report(self, speed: bool = True) -> dict:
        """What is recorded about the data: source, files, the file list's hash, skipped files (up to 50 listed),
        and with `speed` the images/s of the last pass (training records their own per epoch)."""
        return {
            "source": self.source,
            "split": self.index.split,
            "files": len(self.index),
            "file_list_sha256": self.fingerprint(),
            "skipped": len(self.skipped),
            "skipped_files": [{"path": p, "error": e} for p, e in list(self.skipped.items())[:50]],
            **({"images_per_s": round(self.images_per_s, 1)} if speed and self.images_per_s else {}),
        }


def load_folder(
    root: Path, pre: dict, split: str = "all", classes: list[str] | None = None, loader: LoaderSettings | None = None
) -> FolderSamples:
    """`imagefolder:ROOT` for one split, streamed (see the module docstring); `loader` (the spec's options, by
    default the process's) sets the DataLoader's workers and what an unreadable file does."""
    _mode_for(int(pre["channels"]))
    _resample(pre)
    opts = dataclasses.replace(loader if loader is not None else SETTINGS)
    index = scan(root, split, classes, split_rule(pre, opts))
    where = f"imagefolder:{root}" + (f" ({index.split})" if index.split != "all" else "")
    return FolderSamples(index, pre, where, opts)
