"""Calibration and evaluation samples for quantization.

Calibration data is always real images matching the model's input spec: the digits PNGs shipped in
`calib_data/digits` (the default for models trained on digits), a folder given with `--calib`, or a data spec given
with `--data` (digits | imagefolder:PATH | npz:PATH; its train split). Folder images are resized and centre-cropped
by the model's preprocessing (edgeconv.data.folders); nothing is synthesised: an empty folder or a model with no
applicable default is an error naming what is missing. `--calib-limit N` draws a class-stratified subset (seeded
by `--calib-seed`, 0 by default); a folder of more than DEFAULT_FOLDER_LIMIT files is drawn down to that many unless a
limit is given. The record keeps the hash of the decoded tensors and, for folders, the hash of the file list and the
unreadable files skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgeconv.common.errors import EdgeconvError
from edgeconv.data.folders import FolderSamples
from edgeconv.data.sources import Samples, default_calib_dir, load_imagefolder, load_samples
from edgeconv.data.spec import BUNDLED, DataSpec

# Calibration batches: every sample alone (so each routed sample reaches its own `If` branch, as at batch 1) and
# shuffled mixed batches of this size (so the per-sample select branch of a mixed batch is calibrated too).
MIXED_BATCH = 8
DEFAULT_FOLDER_LIMIT = 1000
DEFAULT_SET_LIMIT = 2000  # in-memory sets (a bundled set's train split) above this are drawn from, stratified


@dataclass
class CalibrationSet:
    """Normalised calibration inputs plus what is recorded about them in every quantized artifact."""

    samples: Samples
    source: str
    files: dict | None = None  # for folders: files, file_list_sha256, skipped

    @property
    def size(self) -> int:
        return len(self.samples)

    @property
    def sha256(self) -> str:
        return self.samples.fingerprint()

    def record(self) -> dict:
        return {"source": self.source, "size": self.size, "sha256": self.sha256, **(self.files or {})}

    def feeds(self, input_name: str, mixed_batch: int = MIXED_BATCH, seed: int = 0) -> list[dict[str, np.ndarray]]:
        """Input dicts for onnxruntime: each sample alone, then shuffled batches of `mixed_batch` samples."""
        x = self.samples.x.numpy().astype(np.float32)
        out = [{input_name: x[i : i + 1]} for i in range(len(x))]
        if mixed_batch > 1 and len(x) >= mixed_batch:
            order = np.random.default_rng(seed).permutation(len(x))
            for i in range(0, len(x) - mixed_batch + 1, mixed_batch):
                out.append({input_name: x[order[i : i + mixed_batch]]})
        return out

    def batches(self, batch: int = 1) -> Iterator[np.ndarray]:
        x = self.samples.x.numpy().astype(np.float32)
        for i in range(0, len(x), batch):
            yield x[i : i + batch]


def _default_limit(samples) -> int:
    return DEFAULT_FOLDER_LIMIT if isinstance(samples, FolderSamples) else DEFAULT_SET_LIMIT


def _drawn(limit: int, total: int, seed: int, unit: str = "", hint: str = "") -> str:
    """What the source text says of a stratified subset: " (a stratified 40 of 200 files, seed 7)"."""
    return f" (a stratified {limit} of {total}{unit}{f', seed {seed}' if seed else ''}{hint})"


def _describe_input(pre: dict) -> str:
    return f"{pre.get('channels')}x{pre.get('size')}x{pre.get('size')}"


def load_calibration(
    pre: dict, calib: str | Path | None = None, data: str | None = None, limit: int | None = None, seed: int = 0
) -> CalibrationSet:
    """Calibration samples for a model with preprocessing `pre` (see the module docstring for the sources)."""
    if calib is not None and data is not None:
        raise EdgeconvError("give either --calib DIR or --data SPEC for calibration, not both")
    try:
        if calib is not None:
            root = Path(calib)
            samples = load_imagefolder(root, pre)
            source = f"imagefolder:{root}"
        elif data is not None:
            samples = load_samples(data, pre, split="train")
            source = f"{data} (train split)" if DataSpec.parse(data).bundled else data
        elif pre.get("dataset") in BUNDLED and pre.get("dataset") != "digits" and pre.get("channels") == 1:
            data = pre["dataset"]  # a model trained on a bundled set calibrates on that set's train split
            samples = load_samples(data, pre, split="train")
            source = f"{data} (train split)"
        else:
            if pre.get("dataset") != "digits" or pre.get("channels") != 1:
                raise EdgeconvError(
                    f"no calibration data for this model (input {_describe_input(pre)}, dataset "
                    f"{pre.get('dataset') or 'unknown'}): pass --calib DIR with real images of that size, or "
                    "--data imagefolder:PATH / npz:PATH"
                )
            root = default_calib_dir()
            if not root.is_dir():
                raise EdgeconvError(f"the shipped calibration folder {root} is missing; pass --calib DIR")
            samples = load_imagefolder(root, pre)
            source = f"imagefolder:{root.name} (shipped calib_data/digits)"
    except EdgeconvError as e:
        msg = str(e)
        raise EdgeconvError(msg if msg.startswith("no calibration") else f"calibration data: {msg}") from None
    files = None
    if seed and (limit is None or limit >= len(samples)) and not (limit is None and len(samples) > _default_limit(samples)):
        # The seed only picks which subset --calib-limit draws: with every sample used it would change nothing.
        raise EdgeconvError(
            f"--calib-seed {seed} has no subset to draw: all {len(samples)} calibration samples of {source} are used; "
            f"add --calib-limit N below {len(samples)}"
        )
    if isinstance(samples, FolderSamples):
        if limit is None and len(samples) > DEFAULT_FOLDER_LIMIT:
            limit = DEFAULT_FOLDER_LIMIT
            source += _drawn(limit, len(samples), seed, " files", "; --calib-limit N to change")
        elif limit is not None and limit < len(samples):
            source += _drawn(limit, len(samples), seed, " files")
        if limit is not None:
            samples = samples.stratified(limit, seed=seed)
        try:
            x, y = samples.x, samples.y
        except EdgeconvError as e:
            raise EdgeconvError(f"calibration data: {e}") from None
        rec = samples.report()
        if len(y) == 0 and samples.skipped:
            raise samples.nothing_readable(f"calibration data: {source}")
        files = {k: rec[k] for k in ("files", "file_list_sha256", "skipped")}
        samples = Samples(x, y, samples.classes, samples.source)
    else:
        if limit is None and len(samples) > DEFAULT_SET_LIMIT:  # e.g. fashion's 55,000 train images
            limit = DEFAULT_SET_LIMIT
            source += _drawn(limit, len(samples), seed, "", "; --calib-limit N to change")
        elif limit is not None and limit < len(samples):
            source += _drawn(limit, len(samples), seed)
        if limit is not None:
            samples = samples.stratified(limit, seed=seed)
    if len(samples) == 0:
        raise EdgeconvError(f"calibration data: {source} holds no samples")
    if not torch.isfinite(samples.x).all():
        raise EdgeconvError(f"calibration data: {source} contains NaN or infinite values")
    return CalibrationSet(samples, source, files)


def load_evaluation(pre: dict, spec: str | None, split: str = "test", classes: list[str] | None = None) -> Samples | None:
    """Labelled samples for measuring top-1 of the float and quantized models (None when none apply)."""
    if spec is None:
        if pre.get("dataset") not in BUNDLED or pre.get("channels") != 1:
            return None
        spec = pre["dataset"]  # a model trained on a bundled set is scored on its test split
    bundled_set = DataSpec.parse(spec).bundled
    s = load_samples(spec, pre, split if bundled_set else "test", classes=classes)
    if len(s) == 0 or bool((s.y < 0).all()):
        raise EdgeconvError(f"evaluation data {spec!r} has no labels; accuracy needs labelled samples")
    return s


class OrtCalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over a list of input dicts (`get_next()` -> dict or None)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only feeds[start:end] (onnxruntime's strided calibration collects one range at a time)."""
        self._it = iter(self._feeds[start_index:end_index])

    def __len__(self) -> int:
        return len(self._feeds)


def uniform_stride(feeds: list[dict[str, np.ndarray]]) -> int:
    """A stride that cuts batch-size-sorted feeds into chunks of one batch size each.

    onnxruntime's histogram calibrators (entropy, percentile) stack every captured tensor of one collection pass
    into one array, which fails when batch sizes differ; collecting in chunks of equal batch size avoids that.
    """
    from math import gcd

    sizes: dict[int, int] = {}
    for f in feeds:
        b = len(next(iter(f.values())))
        sizes[b] = sizes.get(b, 0) + 1
    stride = 0
    for n in sizes.values():
        stride = gcd(stride, n)
    return max(stride, 1)


def as_ort_reader(feeds: list[dict[str, np.ndarray]]):
    """Wrap feeds in a real `onnxruntime.quantization.CalibrationDataReader` subclass instance."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(OrtCalibrationReader, CalibrationDataReader):
        pass

    return _Reader(feeds)
