"""Turn collected attention / routing / saliency records into arrays on the image grid, and into PNGs.

The per-head picture is the attention each token *receives*, averaged over the queries that saw it: for a layer
over the whole grid it sums to 1 per head; tokens a sparsified layer no longer has are NaN (drawn transparent);
for windowed attention each window's share is averaged within the window and the windows are weighted equally, so
the grid again sums to 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgeconv.inspection.capture import AttentionRecord, Inspection, SaliencyRecord


def received_attention(rec: AttentionRecord) -> np.ndarray:
    """[H, gh, gw]: attention received per grid cell and head (NaN where the layer had no token)."""
    gh, gw = rec.grid
    a = rec.attn.float()
    if rec.kind == "window":
        ws = int(rec.window)
        ny, nx = gh // ws, gw // ws
        recv = a.mean(dim=2)  # [nW, H, n]: per key, mean over the window's queries
        heads = recv.shape[1]
        # window_partition order: windows (wy, wx) row-major, tokens (iy, ix) row-major inside a window
        grid = recv.reshape(ny, nx, heads, ws, ws).permute(2, 0, 3, 1, 4).reshape(heads, gh, gw) / (ny * nx)
        return grid.numpy()
    recv = a.mean(dim=1)  # [H, N]
    out = torch.full((recv.shape[0], gh * gw), float("nan"))
    out[:, rec.positions] = recv
    return out.reshape(-1, gh, gw).numpy()


def tokens_to_grid(values: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Scatter per-token values onto the [gh, gw] grid; cells without a token are NaN."""
    out = torch.full((grid[0] * grid[1],), float("nan"))
    out[positions] = values.float()
    return out.reshape(grid).numpy()


def keep_mask(rec: SaliencyRecord) -> np.ndarray | None:
    """[gh, gw]: 1 for tokens kept after the layer's top-k, 0 for dropped, NaN for tokens it never had."""
    if rec.kept is None:
        return None
    m = tokens_to_grid(torch.zeros(len(rec.positions)), rec.positions, rec.grid)
    m.reshape(-1)[rec.kept.numpy()] = 1.0
    return m


def upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of [..., gh, gw] to [..., size, size] (each token covers its image patch)."""
    t = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))
    lead = t.shape[:-2]
    t = F.interpolate(t.reshape(-1, 1, *t.shape[-2:]), size=(size, size), mode="nearest")
    return t.reshape(*lead, size, size).numpy()


def _gray(image01: torch.Tensor) -> np.ndarray:
    img = image01.detach().float().cpu()
    return (img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy()


def _show(ax, image01: torch.Tensor, heat: np.ndarray | None = None, cmap: str = "inferno", vmax=None) -> None:
    img = _gray(image01)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    if heat is not None:
        ax.imshow(np.ma.masked_invalid(heat), cmap=cmap, alpha=0.55, vmin=0, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])


def _figure(rows: int, cols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols + 0.4, 1.8 * rows + 0.5), squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> Path:
    from edgeconv.artifacts import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def attention_png(image01: torch.Tensor, ins: Inspection, path: Path, title: str) -> Path:
    """One row per attention layer: the image, then each head's received-attention map over it."""
    recs = ins.attention
    size = int(image01.shape[-1])
    cols = 1 + max(r.heads for r in recs)
    plt, fig, axes = _figure(len(recs), cols)
    for i, rec in enumerate(recs):
        heat = upsample(received_attention(rec), size)
        _show(axes[i, 0], image01)
        label = rec.name + ("" if rec.taken else "\n(conv route: not used)")
        axes[i, 0].set_ylabel(label, fontsize=7)
        for h in range(cols - 1):
            ax = axes[i, 1 + h]
            if h < rec.heads:
                _show(ax, image01, heat[h], vmax=float(np.nanmax(heat[h])) or None)
                ax.set_title(f"head {h}" + (f" ({rec.kind})" if rec.kind != "global" else ""), fontsize=7)
            else:
                ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def router_png(ins: Inspection, path: Path, title: str) -> Path:
    """p_attn per routed block with the decision threshold; bars coloured by the branch taken."""
    plt, fig, axes = _figure(1, 1)
    ax = axes[0, 0]
    fig.set_size_inches(max(3.5, 0.9 * len(ins.routes) + 2), 2.8)
    names = [r.name for r in ins.routes]
    vals = [r.p_attn for r in ins.routes]
    colors = ["tab:orange" if r.route == "attn" else "tab:blue" for r in ins.routes]
    ax.bar(range(len(vals)), vals, color=colors)
    for i, r in enumerate(ins.routes):
        ax.text(i, min(r.p_attn + 0.03, 0.97), r.route, ha="center", fontsize=7)
        ax.hlines(r.threshold, i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=0.8)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(names, rotation=20, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("p(attention)")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def saliency_png(image01: torch.Tensor, ins: Inspection, path: Path, title: str) -> Path:
    """One row per saliency layer: saliency score per token, and the kept-token mask when the layer drops tokens."""
    recs = ins.saliency
    size = int(image01.shape[-1])
    plt, fig, axes = _figure(len(recs), 2)
    for i, rec in enumerate(recs):
        sal = upsample(tokens_to_grid(rec.scores, rec.positions, rec.grid), size)
        _show(axes[i, 0], image01, sal, cmap="viridis", vmax=1.0)
        tau = f", tau {rec.tau:.2f}" if rec.tau is not None else ""
        axes[i, 0].set_title(f"{rec.name} saliency{tau}", fontsize=7)
        mask = keep_mask(rec)
        if mask is None:
            axes[i, 1].axis("off")
            axes[i, 1].text(0.5, 0.5, "keeps all tokens", ha="center", va="center", fontsize=7)
        else:
            _show(axes[i, 1], image01, upsample(mask, size), cmap="Greens", vmax=1.0)
            axes[i, 1].set_title(f"kept {len(rec.kept)}/{len(rec.positions)} tokens", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)
