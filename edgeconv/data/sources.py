"""Data sources: the bundled sets (`digits`, `fashion`: data/bundled.py), `imagefolder:PATH`, `npz:PATH`.

Every source is turned into the model's preprocessing spec (size, channels, mean/std, NCHW). `digits` and `npz` are
in-memory tensors (`Samples`; an npz must already have the model's shape). Image folders are streamed from disk by
a DataLoader and resized/centre-cropped by the preprocessing (`edgeconv.data.folders`); both offer `batches`, `y`,
`classes`, `fingerprint` and `x`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeconv.common.errors import EdgeconvError
from edgeconv.common.settings import LoaderSettings
from edgeconv.data.bundled import BUNDLED_SETS, bundled, digits_split_indices  # noqa: F401 - re-exported
from edgeconv.data.spec import DataSpec

DIGITS_MEAN, DIGITS_STD = BUNDLED_SETS["digits"].mean, BUNDLED_SETS["digits"].std


@dataclass
class Samples:
    """Normalised inputs [N, C, H, W] float32, integer labels [N], and class names."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    source: str = ""

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]

    def take(self, n: int) -> "Samples":
        return Samples(self.x[:n], self.y[:n], self.classes, self.source)

    def stratified(self, n: int, seed: int = 0) -> "Samples":
        """A seeded subset of at most n samples with every class in proportion, in the original order."""
        if n >= len(self):
            return self
        from edgeconv.data.folders import stratified_indices

        keep = torch.from_numpy(stratified_indices(self.y.numpy(), n, seed))
        return Samples(self.x[keep], self.y[keep], self.classes, self.source)

    def fingerprint(self) -> str:
        """A content hash of inputs and labels (recorded with calibration and evaluation results)."""
        h = hashlib.sha256()
        h.update(self.x.numpy().tobytes())
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()


def digits_preprocessing(size: int = 32) -> dict:
    return bundled("digits").preprocessing(size)


def normalise(x01: torch.Tensor, pre: dict) -> torch.Tensor:
    mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (x01 - mean) / std


def digits_images01(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits of one split, upsampled to size x size, pixels in [0, 1], shape [N, 1, size, size]."""
    return bundled("digits").images01(split, size)


SPLIT_ROLES = ("train", "calibrate", "evaluate")


def split_for(data: str, role: str, split: str | None = None, trained_on: str | None = None) -> str:
    """The one rule for which split of `data` a step reads for `role` (train | calibrate | evaluate).

    `digits`, image folders in the ImageNet layout (`train/`, `val/`) and flat class trees (a seeded split) have
    splits: training and calibration read `train`, evaluation reads `split` (default `test`, which is `val/` for a
    folder without `test/`, and the held-out part of a class tree). Any other source is one unsplit set and every
    role reads all of it (`all`), so a step that trains or calibrates and also evaluates on it would score its own
    training data: `check_held_out` refuses that unless asked for. A class tree evaluated on by a model that was
    not trained on it (`trained_on`, another source) is read whole.
    """
    if role not in SPLIT_ROLES:
        raise ValueError(f"unknown split role {role!r}")
    if not has_splits(data):
        return "all"
    if role == "evaluate":
        if split is None and trained_on is not None and data != trained_on and _is_class_tree(data):
            return "all"  # a separate class tree given to evaluate on is held out as a whole
        return split or "test"
    return "train"


def _is_class_tree(data: str) -> bool:
    from edgeconv.data.folders import is_class_tree, is_split_layout

    spec = DataSpec.parse(data)
    return spec.kind == "imagefolder" and not is_split_layout(spec.path) and is_class_tree(spec.path)


def has_splits(data: str) -> bool:
    """Whether `data` has held-out splits: a bundled set, an image folder in the ImageNet layout, or a flat class
    tree (seeded split, see `edgeconv.data.folders`)."""
    spec = DataSpec.parse(data)
    if spec.bundled:
        return True
    if spec.kind == "imagefolder":
        from edgeconv.data.folders import has_split

        return has_split(spec.path)
    return False


def data_for(data: str | None, pre: dict, what: str) -> DataSpec:
    """The data a command reads when `--data` is not given: the source a model was trained on when its
    preprocessing recorded one (digits for a model trained on digits), else a clear request for `--data`."""
    if data:
        return DataSpec.parse(data)
    recorded = str(pre.get("dataset") or "")
    try:
        return DataSpec.parse(recorded)
    except EdgeconvError:
        pass
    c, s = pre.get("channels", "?"), pre.get("size", "?")
    raise EdgeconvError(f"{what}: the model (input {c}x{s}x{s}) records no data it was trained on; pass --data SPEC")


def check_held_out(data: str, eval_data: str | None, allow_train_eval: bool, what: str) -> str:
    """The data a step evaluates on: `eval_data` when given, else `data` - refused for an unsplit source (its
    evaluation would reuse the step's own training data) unless `allow_train_eval`."""
    if eval_data:
        return eval_data
    if not has_splits(data) and not allow_train_eval:
        raise EdgeconvError(
            f"{what}: --data {data} has no held-out split, so evaluating on it would score the "
            "step's own training data; give --eval-data SPEC, or --eval-on-train to accept that"
        )
    return data


def load_samples(
    spec: str, pre: dict, split: str = "test", limit: int | None = None, classes: list[str] | None = None
) -> Samples:
    """Load a bundled set, `imagefolder:PATH` or `npz:PATH` as normalised tensors matching the preprocessing spec.

    With `classes` (a checkpoint's class names), labels index that list: an image folder holding only some of the
    classes is still scored against the model's own class order, and a class the model does not know is an error.
    """
    if split not in {"train", "val", "test", "all"}:
        raise EdgeconvError(f"unknown split {split!r} (train, val, test, all)")
    spec = DataSpec.parse(spec)
    if spec.bundled:
        ds = bundled(spec.kind)
        if pre.get("channels") != 1:
            raise EdgeconvError(f"{spec.kind} are 1-channel images; the model expects {pre.get('channels')} channels")
        x01, y = ds.images01(split, int(pre["size"]))
        s = Samples(normalise(x01, pre), y, list(ds.classes), source=f"{spec.kind}:{split}")
    elif spec.kind == "imagefolder":
        s = load_imagefolder(spec.path, pre, classes, split, spec.loader)
    elif spec.kind == "npz":
        s = load_npz(spec.path, pre, classes)
    else:
        raise EdgeconvError(f"--data {spec}: no loader for this source here")
    if limit is not None:
        s = s.take(limit)
    return s


def load_imagefolder(
    root: Path, pre: dict, classes: list[str] | None = None, split: str = "all", loader: LoaderSettings | None = None
):
    """`root/<class>/*` (labelled), a flat folder of images (label -1), or the ImageNet layout (`train/`, `val/`):
    streamed, see `edgeconv.data.folders`."""
    from edgeconv.data.folders import load_folder

    return load_folder(root, pre, split, classes, loader)


def _check_zip(path: Path) -> None:
    """An npz is a zip archive: anything else is refused here (np.load would read it as a pickled .npy and
    suggest allow_pickle)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        from edgeconv.artifacts.formats import not_a

        raise EdgeconvError(not_a(path, "npz") or f"{path}: not an .npz file (an npz is a zip archive of .npy arrays)")


def npz_image_size(path: Path) -> int | None:
    """The square image size of an npz's `x` ([N,C,S,S] or [N,S,S,C] or [N,S,S]) read from its header only; None
    when it is not square or not there (the loader then says what is wrong)."""
    import zipfile

    _check_zip(path)
    try:
        with zipfile.ZipFile(path) as z, z.open("x.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, _, _ = (
                np.lib.format.read_array_header_1_0(f) if version == (1, 0) else np.lib.format.read_array_header_2_0(f)
            )
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None
    if len(shape) == 3 and shape[1] == shape[2]:
        return int(shape[1])
    if len(shape) == 4:
        if shape[2] == shape[3] and shape[1] <= 16:
            return int(shape[2])
        if shape[1] == shape[2]:
            return int(shape[1])
    return None


def load_npz(path: Path, pre: dict, classes: list[str] | None = None) -> Samples:
    """An .npz with `x` ([N,C,H,W] or [N,H,W,C], uint8 0..255 or float 0..1), optional integer `y` and `classes`.

    With `classes` (the model's), `y` indexes it; an npz that names its own classes must name the same ones.
    """
    if not path.exists():
        raise EdgeconvError(f"no such file: {path}")
    if path.is_dir():
        raise EdgeconvError(f"{path} is a directory, expected an .npz file")
    _check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise EdgeconvError(f"{path}: a single .npy array, expected an .npz with an array named 'x'")
            if "x" not in z:
                raise EdgeconvError(f"{path}: no array named 'x' (found: {', '.join(z.files) or 'nothing'})")
            x = z["x"]
            y = z["y"] if "y" in z else np.full(len(x), -1)
            own = [str(c) for c in z["classes"]] if "classes" in z else []
    except EdgeconvError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/zipfile raise ValueError, BadZipFile, EOFError... for bad files
        raise EdgeconvError(f"{path}: unreadable npz ({type(e).__name__}: {str(e)[:120]})") from None
    if x.dtype.kind not in "uif" or (x.dtype.kind in "ui" and x.dtype != np.uint8):
        raise EdgeconvError(f"{path}: x has dtype {x.dtype}, expected uint8 (0..255) or float (0..1)")
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise EdgeconvError(f"{path}: y must be integer labels of shape [{len(x)}], got {y.dtype} {list(y.shape)}")
    if classes is not None and own and own != list(classes):
        raise EdgeconvError(
            f"{path}: its classes ({', '.join(own[:10])}) differ from the model's ({', '.join(classes[:10])})"
        )
    classes = list(classes) if classes is not None else own
    c, s = pre["channels"], pre["size"]
    if x.ndim == 3 and c == 1:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1:] == (s, s, c) and x.shape[1:] != (c, s, s):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1:] != (c, s, s):
        raise EdgeconvError(f"{path}: x has shape {list(x.shape)}, the model expects [N, {c}, {s}, {s}]")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise EdgeconvError(f"{path}: x holds {bad} NaN or infinite value(s); every pixel must be a finite number")
    x01 = torch.from_numpy(x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0))
    if classes and (y >= len(classes)).any():
        raise EdgeconvError(f"{path}: label {int(y.max())} is out of range for {len(classes)} classes")
    if not classes and (y >= 0).any():
        classes = [str(i) for i in range(int(y.max()) + 1)]
    return Samples(normalise(x01, pre), torch.from_numpy(y.astype(np.int64)), classes, source=f"npz:{path}")


def default_calib_dir() -> Path:
    """The calibration samples shipped with edgeconv (`calib_data/digits` in the repository)."""
    return Path(__file__).resolve().parents[2] / "calib_data" / "digits"


def write_digits_calibration(out: Path, per_class: int = 10, size: int = 32) -> int:
    """Write real digits from the *train* split as PNGs (`out/<class>/*.png`); returns how many were written."""
    from PIL import Image

    x01, y = digits_images01("train", size)
    n = 0
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()[:per_class]
        (out / str(c)).mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(idx.tolist()):
            arr = (x01[i, 0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr, mode="L").save(out / str(c) / f"digit{c}_{j:02d}.png")
            n += 1
    return n


def bundled_fingerprint(kind: str) -> str:
    """What identifies a bundled set's contents for caching (the package that provides it, with its version)."""
    return bundled(kind).fingerprint()
