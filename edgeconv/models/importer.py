"""`edgeconv import`: a user's trained weights become an edgeconv checkpoint.

The weights may be a plain state dict, timm's training file (`{'state_dict': ..., 'state_dict_ema': ..., 'args':
Namespace, 'epoch': ...}`), a `{'model': ...}` file (DeiT, torchvision references) or a DDP state dict (`module.`
prefixes). They are read with `torch.load(weights_only=True)`; the one class allowed beyond plain types is
`argparse.Namespace`, which timm's training script stores and which holds only values.

The checkpoint records how to rebuild the model (the timm name and version, or the factory's name), the classes
and the preprocessing: for timm models from timm's pretrained config, for a user's module from the options given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _tensors_only(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def read_state_dict(path: str | Path, ema: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a weights file and a word on where it was found."""
    from edgeconv.artifacts import safe_torch_load

    p = Path(path)
    obj = safe_torch_load(p, allowed=(argparse.Namespace,), what="weights file")
    if not isinstance(obj, dict):
        raise EdgeconvError(f"{p}: holds a {type(obj).__name__}, expected a state dict")
    if ema:
        if not isinstance(obj.get("state_dict_ema"), dict):
            raise EdgeconvError(f"{p}: has no 'state_dict_ema' (EMA weights); drop --ema")
        sd, where = obj["state_dict_ema"], "state_dict_ema"
    elif isinstance(obj.get("state_dict"), dict):
        sd, where = obj["state_dict"], "state_dict"
    elif isinstance(obj.get("model"), dict):
        sd, where = obj["model"], "model"
    else:
        sd, where = obj, "a plain state dict"
    if "format" in obj and "family" in obj and "config" in obj:
        raise EdgeconvError(f"{p}: is already an edgeconv checkpoint; use it directly")
    if not _tensors_only(sd):
        raise EdgeconvError(f"{p}: {where} is not a mapping of parameter names to tensors")
    if all(k.startswith("module.") for k in sd):
        sd, where = {k[len("module.") :]: v for k, v in sd.items()}, where + " (DDP 'module.' prefix removed)"
    if isinstance(obj.get("epoch"), int):
        where += f", epoch {obj['epoch']}"
    return sd, where


def load_into(model: nn.Module, path: str | Path, ema: bool = False, read: tuple | None = None) -> str:
    """Load a weights file (or its `read_state_dict` result, `read`) into a timm or user-module wrapper
    (`model.net`); returns where the weights were."""
    sd, where = read or read_state_dict(path, ema)
    net = getattr(model, "net", model)
    own = net.state_dict()
    if any(k in sd and tuple(sd[k].shape) != tuple(v.shape) for k, v in own.items()):
        sd, adapted = _timm_filter(sd, net)
        where += adapted
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatch(es), e.g. {k}: file {list(sd[k].shape)} vs model {list(own[k].shape)}"
            )
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        name = model.cfg.get("timm_name") or model.cfg.get("factory") or model.cfg.get("family")
        raise EdgeconvError(f"{path}: weights do not fit {name} ({'; '.join(parts)})")
    net.load_state_dict(sd, strict=True)
    return where


def _timm_filter(sd: dict, net: nn.Module) -> tuple[dict, str]:
    """timm's own `checkpoint_filter_fn` of the model's module, as its pretrained loader uses it: resamples position
    embeddings and attention-bias tables to the model's input size. Nothing for other models."""
    import sys

    mod = sys.modules.get(type(net).__module__)
    fn = getattr(mod, "checkpoint_filter_fn", None) if mod and mod.__name__.startswith("timm.") else None
    if fn is None:
        return sd, ""
    try:
        out = fn(dict(sd), net)
    except Exception:  # noqa: BLE001 - timm could not adapt it: the shape report below says what differs
        return sd, ""
    return out, f", resized to the model's input by {mod.__name__}.checkpoint_filter_fn"


def parse_classes(spec: str) -> list[str]:
    """`--classes 10` (named 0..9), `--classes cat,dog,...`, or `--classes @names.txt` (one name per line)."""
    spec = spec.strip()
    if spec.startswith("@"):
        p = Path(spec[1:])
        if not p.is_file():
            raise EdgeconvError(f"--classes: no such file: {p}")
        names = [line.strip() for line in p.read_text(errors="replace").splitlines() if line.strip()]
    elif spec.isdigit():
        n = int(spec)
        if not 2 <= n <= 100_000:
            raise EdgeconvError(f"--classes must be between 2 and 100000, got {n}")
        names = [str(i) for i in range(n)]
    else:
        names = [c.strip() for c in spec.split(",") if c.strip()]
    if len(names) < 2:
        raise EdgeconvError("--classes needs at least two classes (a count, a comma list or @file)")
    if len(set(names)) != len(names):
        raise EdgeconvError("--classes: names repeat")
    return names


def preprocessing_for(model_name: str, size: int | None, channels: int, overrides: dict) -> dict:
    """timm models: timm's pretrained config, then any option given; a user's module: the options (ImageNet's
    mean/std and bilinear, crop 1.0 unless given)."""
    if model_name.startswith("timm:"):
        from edgeconv.models.timm_family import pretrained_preprocessing

        pre = pretrained_preprocessing(model_name[5:], size, channels)
    else:
        if size is None:
            raise EdgeconvError("--img-size is required for a package.module:factory model")
        mean = IMAGENET_MEAN if channels == 3 else [0.5] * channels
        std = IMAGENET_STD if channels == 3 else [0.5] * channels
        pre = {
            "size": int(size),
            "channels": channels,
            "mean": mean,
            "std": std,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "layout": "NCHW",
            "pixel_range": "[0,1] before normalisation",
            "source": "edgeconv import defaults",
        }
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("mean", "std"):
        if key in given and len(given[key]) != channels:
            raise EdgeconvError(f"--{key} needs {channels} values (one per channel), got {len(given[key])}")
    if given:
        pre = {**pre, **given, "source": pre["source"] + f", overridden: {', '.join(sorted(given))}"}
    return pre


def import_checkpoint(
    model_name: str,
    weights: str | Path,
    out: str | Path,
    *,
    classes: list[str],
    img_size: int | None,
    in_chans: int,
    overrides: dict | None = None,
    ema: bool = False,
    command: str = "import",
) -> dict:
    from edgeconv import artifacts
    from edgeconv.models.registry import create_model, parse_name

    fam, _ = parse_name(model_name)
    if fam not in ("timm", "module"):
        raise EdgeconvError(f"{model_name}: import brings timm:NAME or package.module:factory models; zoo models train")
    pre = preprocessing_for(model_name, img_size, in_chans, overrides or {})
    read = read_state_dict(weights, ema)  # a bad file fails before the model is built
    model = create_model(model_name, num_classes=len(classes), in_chans=in_chans, img_size=pre["size"])
    where = load_into(model, weights, ema, read)
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, in_chans, pre["size"], pre["size"]))
    if tuple(logits.shape) != (2, len(classes)):
        raise EdgeconvError(
            f"{model_name}: gives outputs of shape {list(logits.shape)} for 2 images, expected [2, {len(classes)}]"
        )
    if not torch.isfinite(logits).all():
        raise EdgeconvError(f"{weights}: the imported model gives NaN or infinite outputs")
    source = {"path": str(weights), "sha256": artifacts.file_sha256(weights), "weights": where}
    path = artifacts.save_checkpoint(
        out,
        model,
        preprocessing=pre,
        classes=classes,
        metrics={},
        provenance_rec=artifacts.provenance(command),
        extra={"imported_from": source},
    )
    n = sum(p.numel() for p in model.parameters())
    return {"out": str(path), "model": model_name, "params": n, "classes": len(classes), "input": pre["size"], **source}
