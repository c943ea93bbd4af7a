"""ImageNet-layout JPEG folders made from scikit-learn's bundled digits, for scale tests of streaming data loading.

    python -m edgeconv.data.digitsfolder OUT --train 80000 --val 2000 --corrupt 20 --truncated 20 --workers 4

writes `OUT/train/<class>/img_NNNNNN.jpg` and `OUT/val/<class>/img_NNNNNN.jpg` (classes "0".."9") and, last,
`OUT/MANIFEST.json` (counts per split and class, seed, sizes, the broken files). Train images are drawn from the
digits `train` split of `edgeconv.data.sources.digits_split_indices`, val images from its `test` split, so no val digit is
ever seen in training. Draws are with replacement and class-balanced: image `i` of a split is of class `i % 10`, a
random digit of that class.

Each image is RGB, `min_size..max_size` wide and (independently) high, on a random background (a solid colour with a
smooth colour gradient or a little uniform noise); the digit is upscaled (bilinear) to 55-90% of the shorter side and
drawn at a random place inside the central square of the image (so a centre crop keeps it), in a colour whose
luminance differs from every background pixel's by at least 100 (0..255 scale), with the digit's intensity as alpha;
JPEG quality 70..95.

Each split also gets `corrupt` files of random bytes (`bad_NNNNNN.jpg`) and `truncated` valid JPEGs cut in the middle
of their image data, about half the pixels (`trunc_NNNNNN.jpg`: they open, and fail when decoded), spread over the
class folders, on top of the requested image counts.

Every file is a function of (seed, split, kind, index) only: each is drawn from its own generator seeded with
those, so the output is byte-identical whatever the number of worker processes or the chunking.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

from edgeconv.common.errors import EdgeconvError

CLASSES = [str(i) for i in range(10)]
SPLITS = {"train": ("train", 0), "val": ("test", 1)}  # folder split -> (digits split it draws from, seed code)
KIND_IMAGE, KIND_CORRUPT, KIND_TRUNCATED = 0, 1, 2
JPEG_QUALITY = (70, 95)
DIGIT_FRACTION = (0.55, 0.90)
MIN_CONTRAST = 100.0  # luminance difference between the digit's colour and every background pixel (0..255)
FORMAT_VERSION = 1
CHUNK = 256  # images per worker task (scheduling only: it does not change any file)

# Set in each worker by _init (and in-process when workers == 1)
_STATE: dict = {}


def _init(out: str, digits: np.ndarray, pools: dict, seed: int, min_size: int, max_size: int) -> None:
    images = [_digit_image(d) for d in digits]  # converted once per process, not once per file
    _STATE.update(out=out, digits=images, pools=pools, seed=seed, min_size=min_size, max_size=max_size)


def _digit_image(digit: np.ndarray):
    """An 8x8 digit (values 0..16) as a PIL "L" image (0..255)."""
    from PIL import Image

    return Image.fromarray(np.clip(np.round(np.asarray(digit) * (255.0 / 16.0)), 0, 255).astype(np.uint8), "L")


def _rng(seed: int, split_code: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, split_code, kind, index])


def _luma(c) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _with_luma(c: list[float], target: float) -> list[float]:
    """Colour `c` (3 floats 0..255) scaled towards black, or blended towards white, to luminance `target`."""
    lum = _luma(c)
    if lum > target:
        k = target / max(lum, 1e-6)
        return [v * k for v in c]
    k = (target - lum) / max(255.0 - lum, 1e-6)
    return [v + (255.0 - v) * k for v in c]


def _background(rng: np.random.Generator, h: int, w: int, light: bool) -> tuple[np.ndarray, float, float]:
    """A light or dark [h, w, 3] uint8 background: a solid colour plus a smooth gradient or a little noise.

    Returns it with bounds on its pixels' luminance. Each channel's variation is kept inside 0..255 (nothing is
    clipped), so the bounds are exact for a gradient and safe for noise: a light background stays at or above
    luminance 110, a dark one at or below 145, and a digit colour MIN_CONTRAST away from all of it always exists.
    (3-vectors are Python floats: numpy's per-call overhead is larger than the work.)
    """
    u = rng.random(8).tolist()
    base = _with_luma([v * 255.0 for v in u[:3]], 150 + 85 * u[3] if light else 20 + 85 * u[3])
    room = [min(v, 255.0 - v) for v in base]  # per channel, how far it can move either way
    lum = _luma(base)
    bg = np.empty((h, w, 3), dtype=np.uint8)  # channel values are truncated after adding 0.5: rounded
    if u[4] < 0.65:  # smooth gradient along a random direction, -1..1 corner to corner
        theta = rng.uniform(0, 2 * np.pi)
        cos, sin = float(np.cos(theta)), float(np.sin(theta))
        lo = min(0.0, cos * (w - 1)) + min(0.0, sin * (h - 1))
        hi = max(0.0, cos * (w - 1)) + max(0.0, sin * (h - 1))
        k = 2.0 / max(hi - lo, 1e-6)
        ramp = np.arange(h, dtype=np.float32)[:, None] * np.float32(sin * k) + (
            np.arange(w, dtype=np.float32) * np.float32(cos * k) - np.float32(lo * k + 1.0)
        )
        delta = [(2 * u[5 + c] - 1) * min(40.0, room[c]) for c in range(3)]
        for c in range(3):  # channel by channel: numpy broadcasting over a last axis of 3 is several times slower
            bg[:, :, c] = ramp * np.float32(delta[c]) + np.float32(base[c] + 0.5)
        spread = abs(_luma(delta))
    else:  # a little uniform noise
        amp = [min(8.0, r) for r in room]
        for c in range(3):
            bg[:, :, c] = rng.random((h, w), dtype=np.float32) * np.float32(2 * amp[c]) + np.float32(base[c] - amp[c] + 0.5)
        spread = _luma(amp)
    return bg, lum - spread, lum + spread


def _foreground(rng: np.random.Generator, lum_min: float, lum_max: float, light: bool) -> tuple[int, int, int]:
    """A colour whose luminance is >= MIN_CONTRAST away from every background pixel (+2 for rounding)."""
    u = rng.random(4).tolist()
    c = [v * 255.0 for v in u[:3]]
    if light:  # dark digit: luminance <= lum_min - contrast
        target = u[3] * (lum_min - MIN_CONTRAST - 2)
        c = c if _luma(c) <= target else _with_luma(c, target)
        r, g, b = (min(255, max(0, int(v + 0.5))) for v in c)
    else:  # light digit: luminance >= lum_max + contrast
        target = lum_max + MIN_CONTRAST + 2 + u[3] * (255 - lum_max - MIN_CONTRAST - 2)
        c = c if _luma(c) >= target else _with_luma(c, target)
        r, g, b = (min(255, max(0, int(np.ceil(v - 1e-3)))) for v in c)
    return r, g, b


def render(rng: np.random.Generator, digit, min_size: int, max_size: int) -> bytes:
    """One JPEG (bytes) of an 8x8 digit (array of values 0..16, or its `_digit_image`) on a random background."""
    from PIL import Image

    d8 = _digit_image(digit) if isinstance(digit, np.ndarray) else digit
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    light = bool(rng.random() < 0.5)
    bg, lum_min, lum_max = _background(rng, h, w, light)
    fg = _foreground(rng, lum_min, lum_max, light)
    short = min(w, h)
    side = max(1, int(round(rng.uniform(*DIGIT_FRACTION) * short)))
    # anywhere inside the central short x short square: a centre crop (the usual evaluation transform) keeps the
    # digit whatever the aspect ratio; anywhere in a 24x96 image, it would often be cropped out
    x0 = (w - short) // 2 + int(rng.integers(0, short - side + 1))
    y0 = (h - short) // 2 + int(rng.integers(0, short - side + 1))
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    im = Image.frombuffer("RGB", (w, h), bg, "raw", "RGB", 0, 1)
    im.paste(fg, (x0, y0, x0 + side, y0 + side), d8.resize((side, side), Image.Resampling.BILINEAR))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _decode_stage(data: bytes) -> str:
    """How far Pillow gets with `data`: "open" fails, "load" fails, or "ok"."""
    from PIL import Image, ImageFile

    old, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        try:
            im = Image.open(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for broken data
            return "open"
        with im:
            try:
                im.load()
            except Exception:  # noqa: BLE001
                return "load"
        return "ok"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _scan_start(jpeg: bytes) -> int:
    """Offset of the first entropy-coded byte (after the SOS segment) of a baseline JPEG."""
    sos = jpeg.find(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big") if sos >= 0 else 0


def _pick_digit(rng: np.random.Generator, split: str, cls: int):
    pool = _STATE["pools"][split][cls]
    return _STATE["digits"][pool[int(rng.integers(len(pool)))]]


_PREFIX = {KIND_IMAGE: "img", KIND_CORRUPT: "bad", KIND_TRUNCATED: "trunc"}


def _image_path(split: str, kind: int, index: int, cls: int) -> str:
    """The file's path relative to the folder, with "/" separators."""
    return f"{split}/{CLASSES[cls]}/{_PREFIX[kind]}_{index:06d}.jpg"


def _make_file(split: str, kind: int, index: int) -> tuple[str, bytes]:
    """(relative path, bytes) of file `index` of `kind` in `split`; depends only on the seed and these."""
    st = _STATE
    code = SPLITS[split][1]
    rng = _rng(st["seed"], code, kind, index)
    cls = index % len(CLASSES)
    if kind == KIND_IMAGE:
        data = render(rng, _pick_digit(rng, split, cls), st["min_size"], st["max_size"])
    elif kind == KIND_TRUNCATED:
        # cut in the middle of the image data, not at half the file: headers are about half of a JPEG this small,
        # and a cut inside them fails at open; like an interrupted copy, this one opens (its size is known) and
        # fails when decoded; checked, so the promise holds
        for _ in range(100):
            full = render(rng, _pick_digit(rng, split, cls), st["min_size"], st["max_size"])
            start = _scan_start(full)
            data = full[: start + (len(full) - start) // 2]
            if _decode_stage(data) == "load":
                break
        else:
            raise RuntimeError(f"no truncated JPEG that opens and fails to decode in 100 draws ({split} #{index})")
    else:
        for _ in range(100):  # random bytes that some Pillow plugin would open are redrawn
            data = rng.integers(0, 256, int(rng.integers(400, 4000)), dtype=np.uint8).tobytes()
            if _decode_stage(data) == "open":
                break
        else:
            raise RuntimeError(f"no unopenable random bytes in 100 draws ({split} #{index})")
    return _image_path(split, kind, index, cls), data


def _write_chunk(task: tuple[str, int, int, int]) -> int:
    split, kind, start, stop = task
    out = _STATE["out"]
    for i in range(start, stop):
        rel, data = _make_file(split, kind, i)
        with open(os.path.join(out, rel), "wb") as f:
            f.write(data)
    return stop - start


def _check(n_train: int, n_val: int, seed: int, corrupt: int, truncated: int, min_size: int, max_size: int, workers: int):
    if n_train < 1:
        raise EdgeconvError(f"--train must be at least 1 (got {n_train})")
    if n_val < 0:
        raise EdgeconvError(f"--val must be 0 or more (got {n_val})")
    if seed < 0:
        raise EdgeconvError(f"--seed must be 0 or more (got {seed})")
    if corrupt < 0 or truncated < 0:
        raise EdgeconvError(f"--corrupt and --truncated must be 0 or more (got {corrupt}, {truncated})")
    if min_size < 8 or max_size < 8:
        raise EdgeconvError(f"image sizes must be at least 8 pixels (got --min-size {min_size}, --max-size {max_size})")
    if min_size > max_size:
        raise EdgeconvError(f"--min-size {min_size} is larger than --max-size {max_size}")
    if workers < 1:
        raise EdgeconvError(f"--workers must be at least 1 (got {workers})")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EdgeconvError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise EdgeconvError(f"{out} exists and is not empty: give a new or empty folder")


def _counts(n: int) -> dict[str, int]:
    k = len(CLASSES)
    return {c: n // k + (1 if i < n % k else 0) for i, c in enumerate(CLASSES)}


def write_digits_folder(
    out: Path,
    n_train: int,
    n_val: int,
    *,
    seed: int = 0,
    corrupt: int = 0,
    truncated: int = 0,
    min_size: int = 24,
    max_size: int = 96,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write the folder (see the module docstring) into `out` (new or empty) and return its manifest.

    `corrupt` and `truncated` are per split, on top of `n_train` / `n_val`. Raises `EdgeconvError` for a non-empty
    `out` or invalid numbers.
    """
    from sklearn.datasets import load_digits

    from edgeconv.data.sources import digits_split_indices

    out = Path(out)
    _check(n_train, n_val, seed, corrupt, truncated, min_size, max_size, workers)
    _check_out(out)
    d = load_digits()
    digits = np.asarray(d.images, dtype=np.float32)
    labels = np.asarray(d.target, dtype=np.int64)
    parts = digits_split_indices(labels)
    pools = {
        split: [parts[src][labels[parts[src]] == c].astype(np.int64) for c in range(len(CLASSES))]
        for split, (src, _) in SPLITS.items()
    }
    for split, per in pools.items():
        empty = [CLASSES[c] for c, p in enumerate(per) if len(p) == 0]
        if empty:
            raise EdgeconvError(f"the digits {SPLITS[split][0]} split has no digit of class(es) {', '.join(empty)}")
    for split in SPLITS:
        for c in CLASSES:
            (out / split / c).mkdir(parents=True, exist_ok=True)
    manifest_path = out / "MANIFEST.json"

    sizes = {"train": n_train, "val": n_val}
    tasks = []
    for split, n in sizes.items():
        tasks += [(split, KIND_IMAGE, s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
        tasks += [(split, KIND_CORRUPT, 0, corrupt)] if corrupt else []
        tasks += [(split, KIND_TRUNCATED, 0, truncated)] if truncated else []
    total = sum(t[3] - t[2] for t in tasks)
    init_args = (str(out), digits, pools, seed, min_size, max_size)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from edgeconv.common.console import err_console

    bar = Progress(
        TextColumn("[bold]digits folder[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not progress,
    )
    with bar:
        job = bar.add_task("write", total=total)
        if workers == 1:
            _init(*init_args)
            for t in tasks:
                bar.advance(job, _write_chunk(t))
        else:
            ctx = multiprocessing.get_context("spawn")  # the parent has torch loaded: no fork under its threads
            with ctx.Pool(min(workers, len(tasks)), initializer=_init, initargs=init_args) as pool:
                for done in pool.imap_unordered(_write_chunk, tasks):
                    bar.advance(job, done)

    bad = {
        kind_name: {split: [_image_path(split, kind, i, i % len(CLASSES)) for i in range(k)] for split in SPLITS}
        for kind_name, kind, k in (("corrupt", KIND_CORRUPT, corrupt), ("truncated", KIND_TRUNCATED, truncated))
    }
    manifest = {
        "generator": "edgeconv.data.digitsfolder",
        "version": FORMAT_VERSION,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "jpeg_quality": list(JPEG_QUALITY),
        "digit_fraction": list(DIGIT_FRACTION),
        "classes": CLASSES,
        "corrupt": corrupt,
        "truncated": truncated,
        "splits": {
            split: {
                "digits_split": SPLITS[split][0],
                "distinct_digits": int(sum(len(p) for p in pools[split])),
                "images": n,
                "per_class": _counts(n),
                "corrupt": corrupt,
                "truncated": truncated,
                "files": n + corrupt + truncated,
            }
            for split, n in sizes.items()
        },
        "bad_files": bad,
    }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m edgeconv.data.digitsfolder",
        description="Write an ImageNet-layout folder (train/<class>/*.jpg, val/<class>/*.jpg) of digits JPEGs.",
    )
    ap.add_argument("out", type=Path, help="output folder (new or empty)")
    ap.add_argument("--train", type=int, required=True, help="train images (drawn from the digits train split)")
    ap.add_argument("--val", type=int, required=True, help="val images (drawn from the digits test split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corrupt", type=int, default=0, help="random-byte .jpg files per split (extra)")
    ap.add_argument("--truncated", type=int, default=0, help="JPEGs cut to half their length per split (extra)")
    ap.add_argument("--min-size", type=int, default=24, help="smallest width/height in pixels")
    ap.add_argument("--max-size", type=int, default=96, help="largest width/height in pixels")
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        # checked before anything heavy is imported, so a refusal is immediate
        _check(args.train, args.val, args.seed, args.corrupt, args.truncated, args.min_size, args.max_size, args.workers)
        _check_out(args.out)
        m = write_digits_folder(
            args.out,
            args.train,
            args.val,
            seed=args.seed,
            corrupt=args.corrupt,
            truncated=args.truncated,
            min_size=args.min_size,
            max_size=args.max_size,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except EdgeconvError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (the folder is incomplete: it has no MANIFEST.json)", file=sys.stderr)
        sys.exit(130)
    s = m["splits"]
    print(
        f"wrote {args.out}: train {s['train']['files']} files, val {s['val']['files']} files "
        f"({args.corrupt} corrupt + {args.truncated} truncated per split)"
    )


if __name__ == "__main__":
    main()
