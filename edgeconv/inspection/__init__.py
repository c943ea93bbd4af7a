"""`edgeconv inspect`: what a model attends to, how it routes, which tokens its saliency gates keep.

`inspect_checkpoint(ckpt, ["digits:3", "img.png"], out_dir)` writes, per image, `<name>_attention.png` (per head,
per layer), `<name>_router.png` (routed models) and `<name>_saliency.png` (saliency family), plus `inspect.json`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from edgeconv.common.errors import EdgeconvError
from edgeconv.inspection.capture import (
    AttentionRecord,
    Inspection,
    RouteRecord,
    SaliencyRecord,
    attention_modules,
    inspect_model,
)
from edgeconv.inspection.render import (
    attention_png,
    keep_mask,
    received_attention,
    router_png,
    saliency_png,
    tokens_to_grid,
    upsample,
)

__all__ = [  # re-exported: the library's inspection API
    "AttentionRecord",
    "Inspection",
    "RouteRecord",
    "SaliencyRecord",
    "attention_modules",
    "inspect_model",
    "attention_png",
    "keep_mask",
    "received_attention",
    "router_png",
    "saliency_png",
    "tokens_to_grid",
    "upsample",
]


def load_image(spec: str, pre: dict) -> tuple[str, torch.Tensor, int | None]:
    """(display name, image [C, H, W] in [0, 1], label or None) for `digits:N` (N-th test digit) or an image path."""
    from edgeconv.data.folders import read_image01
    from edgeconv.data.sources import digits_images01

    if spec.startswith("digits:"):
        n = spec.split(":", 1)[1]
        if not n.isdigit():
            raise EdgeconvError(f"{spec}: expected digits:N with N a test-digit index, e.g. digits:0")
        if pre.get("channels") != 1:
            raise EdgeconvError(f"{spec}: digits are 1-channel, the model expects {pre.get('channels')} channels")
        x01, y = digits_images01("test", int(pre["size"]))
        if int(n) >= len(x01):
            raise EdgeconvError(f"{spec}: the digits test split has {len(x01)} images (0..{len(x01) - 1})")
        return f"digits{int(n)}", x01[int(n)], int(y[int(n)])
    path = Path(spec)
    if not path.exists():
        raise EdgeconvError(f"no such image: {path} (give a PNG path or digits:N)")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem), read_image01(path, pre), None


def summarize(ins: Inspection, classes: list[str]) -> dict:
    """Plain-JSON numbers behind the pictures."""
    return {
        "pred": classes[ins.pred] if ins.pred < len(classes) else ins.pred,
        "confidence": float(ins.probs[ins.pred]),
        "routes": [
            {"block": r.name, "p_attn": r.p_attn, "route": r.route, "threshold": r.threshold, "mode": r.mode}
            for r in ins.routes
        ],
        "attention": [
            {
                "layer": a.name,
                "kind": a.kind,
                "heads": a.heads,
                "tokens": int(len(a.positions)),
                "grid": list(a.grid),
                "window": a.window,
                "taken": a.taken,
            }
            for a in ins.attention
        ],
        "saliency": [
            {
                "layer": s.name,
                "tokens": int(len(s.positions)),
                "kept": None if s.kept is None else int(len(s.kept)),
                "tau": s.tau,
                "mean_score": float(s.scores.mean()),
            }
            for s in ins.saliency
        ],
    }


def inspect_checkpoint(ckpt: str | Path, images: list[str], out_dir: str | Path, routing: str | None = None) -> dict:
    """Inspect each image with the checkpoint's model; write PNGs and inspect.json into out_dir."""
    from edgeconv import artifacts
    from edgeconv.data.sources import normalise
    from edgeconv.models import load_model, set_routing

    if not images:
        raise EdgeconvError("give at least one image (a PNG path or digits:N)")
    model, ck = load_model(ckpt)
    if routing and not set_routing(model, routing):
        raise EdgeconvError(f"{ckpt}: model has no router, --routing does not apply")
    pre, classes = ck["preprocessing"], ck["classes"]
    loaded = [load_image(s, pre) for s in images]  # check every image before writing anything
    out = Path(out_dir)
    model_name = f"{ck['family']}-{ck['config'].get('variant')}"
    results = []
    for name, x01, label in loaded:
        ins = inspect_model(model, normalise(x01.unsqueeze(0), pre)[0])
        summary = summarize(ins, classes)
        title = f"{model_name} on {name}: predicted {summary['pred']} ({100 * summary['confidence']:.0f}%)" + (
            f", label {classes[label]}" if label is not None else ""
        )
        files = [attention_png(x01, ins, out / f"{name}_attention.png", title)]
        if ins.routes:
            files.append(router_png(ins, out / f"{name}_router.png", title))
        if ins.saliency:
            files.append(saliency_png(x01, ins, out / f"{name}_saliency.png", title))
        results.append(
            {
                "image": name,
                "label": classes[label] if label is not None else None,
                **summary,
                "files": [str(f) for f in files],
            }
        )
    report = {"checkpoint": str(ckpt), "model": model_name, "images": results}
    artifacts.atomic_write_json(out / "inspect.json", report)
    return report
