"""The "your own model" walkthrough, end to end: a model trained with timm's own tools -> edgeconv -> INT8 + bench.

    .venv-timm/bin/python benchmarks/own_model.py [--work DIR] [--model efficientvit_m0] [--size 64]
        [--epochs 8] [--kd-epochs 12] [--train 3000] [--val 600]

1. writes an ImageNet-layout folder of digits JPEGs of mixed sizes (`python -m edgeconv.data.digitsfolder`);
2. trains the timm model the way a timm user does (torchvision's ImageFolder, timm's `create_transform` from the
   model's pretrained config, AdamW) and saves timm's training-file layout (`state_dict`, `epoch`, `args`);
3. runs the README's commands: `edgeconv import`, `prune --target-macs 0.5`, `distill`, `export`, `validate`,
   `quantize --int8`, `bench`; prints each command, its wall time and the bench table.

Runs in the timm venv (timm needs torchvision).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed import cpu_class  # noqa: E402


def run(*args: str) -> str:
    cmd = [sys.executable, "-m", "edgeconv", *args]
    print("$ edgeconv " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    if r.returncode != 0:
        sys.exit(f"failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return r.stdout


def train_with_timm(name: str, folder: Path, size: int, epochs: int, out: Path) -> None:
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, img_size=size)
    cfg = {**resolve_data_config(model=model), "input_size": (3, size, size)}
    # timm's training transform with a digit-friendly recipe: no flips, crops that keep most of the digit
    train_tf = create_transform(**cfg, is_training=True, scale=(0.6, 1.0), hflip=0.0, auto_augment=None, re_prob=0.0)
    ds = ImageFolder(str(folder / "train"), transform=train_tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * len(loader))
    model.train()
    for epoch in range(epochs):
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
        print(f"  timm training epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, "
              f"{seen / (time.perf_counter() - t0):.0f} img/s", flush=True)  # fmt: skip
    args = argparse.Namespace(model=name, epochs=epochs, lr=2e-3, img_size=size)
    torch.save({"epoch": epochs, "arch": name, "state_dict": model.state_dict(), "args": args, "version": 2}, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/own-model"))
    ap.add_argument("--model", default="efficientvit_m0")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--kd-epochs", type=int, default=12)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=600)
    a = ap.parse_args()
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_class()}, {os.cpu_count()} cores")
    folder = w / "digits"
    if not folder.exists():
        subprocess.run([sys.executable, "-m", "edgeconv.data.digitsfolder", str(folder), "--train", str(a.train),
                        "--val", str(a.val), "--no-progress"], check=True)  # fmt: skip
    ckpt = w / "model_best.pth.tar"
    if not ckpt.exists():
        print(f"training {a.model} with timm ({a.epochs} epochs at {a.size}px)")
        train_with_timm(a.model, folder, a.size, a.epochs, ckpt)
    data = f"imagefolder:{folder}"
    classes = ",".join(str(i) for i in range(10))
    run("import", f"timm:{a.model}", str(ckpt), "--classes", classes, "--img-size", str(a.size), "-o", str(w / "m.pt"))
    print(run("eval", str(w / "m.pt"), "--data", data))
    print(run("prune", str(w / "m.pt"), "--data", data, "--target-macs", "0.5", "-o", str(w / "pruned.pt")))
    print(run("distill", "--teacher", str(w / "m.pt"), "--student", str(w / "pruned.pt"), "--data", data,
        "--epochs", str(a.kd_epochs), "-o", str(w / "student.pt")))  # fmt: skip
    run("export", str(w / "student.pt"), "-o", str(w / "student.onnx"))
    run("validate", str(w / "student.onnx"), "--data", data)
    run("quantize", str(w / "student.onnx"), "--int8", "--data", data, "--calib-limit", "500",
        "-o", str(w / "student.int8.onnx"))  # fmt: skip
    out = run("bench", str(w / "m.pt"), str(w / "student.pt"), str(w / "student.onnx"), str(w / "student.int8.onnx"),
              "--data", data, "--batch", "1,16", "--md", str(w / "bench.md"))  # fmt: skip
    print(out)


if __name__ == "__main__":
    main()
