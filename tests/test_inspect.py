"""`edgeconv inspect`: attention maps, router decisions, saliency/keep masks, and the PNGs drawn from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgeconv.artifacts import save_checkpoint
from edgeconv.common.errors import EdgeconvError
from edgeconv.data.sources import digits_images01, normalise
from edgeconv.inspection import (
    AttentionRecord,
    inspect_checkpoint,
    inspect_model,
    keep_mask,
    load_image,
    received_attention,
    upsample,
)
from edgeconv.models import create_model, families, routers
from edgeconv.models.layers import window_merge

TOKEN_GRID_32 = {"effvit": 4}  # families whose token grid at 32 px is not 8x8
ATTENTION_FAMILIES = [f"{name}-tiny" for name, fam in families().items() if fam.has_attention and "tiny" in fam.variants]


def _digit(pre: dict, i: int = 0) -> torch.Tensor:
    x01, _ = digits_images01("test", pre["size"])
    return normalise(x01[i : i + 1], pre)[0]


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name).eval()


@pytest.mark.parametrize("name", ATTENTION_FAMILIES)
def test_attention_maps_are_distributions_on_the_token_grid(name, digits_pre):
    ins = inspect_model(_model(name), _digit(digits_pre))
    assert ins.attention, f"{name}: no attention layer recorded"
    assert math.isclose(float(ins.probs.sum()), 1.0, rel_tol=1e-5)
    for rec in ins.attention:
        rows = rec.attn.sum(-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5), f"{rec.name}: rows do not sum to 1"
        grid = received_attention(rec)
        side = TOKEN_GRID_32.get(name.split("-")[0], 8)
        assert grid.shape == (rec.heads, side, side)  # 32 px digits -> 8x8 tokens (effvit-tiny: stride 8, 4x4)
        per_head = np.nansum(grid.reshape(rec.heads, -1), axis=1)
        assert np.allclose(per_head, 1.0, atol=1e-5), f"{rec.name}: received attention does not sum to 1"
        if rec.kind != "window":  # cells without a token are NaN
            assert np.isnan(grid).sum() == rec.heads * (side * side - len(rec.positions))
        assert upsample(grid, 32).shape == (rec.heads, 32, 32)


def test_window_attention_lands_on_the_right_cells():
    # Every query in every window attends only to its window's first token: the map must light up exactly the
    # top-left cell of each 4x4 window of the 8x8 grid.
    ws, heads = 4, 2
    attn = torch.zeros(4, heads, ws * ws, ws * ws)
    attn[..., 0] = 1.0
    rec = AttentionRecord("w", "window", attn, (8, 8), torch.arange(64), ws)
    grid = received_attention(rec)
    hot = np.argwhere(grid[0] > 0)
    assert sorted(map(tuple, hot.tolist())) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert np.isclose(grid.sum(axis=(1, 2)), 1.0).all()


def test_acmix_map_matches_the_models_own_window_merge(digits_pre):
    model = _model("acmix-tiny")
    ins = inspect_model(model, _digit(digits_pre, 3))
    rec = ins.attention[0]
    assert rec.kind == "window" and rec.attn.shape == (4, 4, 16, 16)  # 4 windows x 4 heads x 16 x 16
    per_token = rec.attn.mean(dim=2).permute(0, 2, 1)  # [nW, n, H]: received, per head
    merged = window_merge(per_token, rec.window, 1, 8, 8)[0] / 4  # the model's own inverse of partition
    assert np.allclose(received_attention(rec), merged.numpy(), atol=1e-6)


def test_saliency_tokens_map_back_through_sparsification(digits_pre):
    model = _model("saliency-tiny")  # layer 1 keeps the top 50% salient tokens
    ins = inspect_model(model, _digit(digits_pre))
    kinds = [r.kind for r in ins.attention]
    assert kinds == ["global", "global", "sparse"]
    sal = {s.name: s for s in ins.saliency}
    layer1, layer2 = sal["blocks.layers.1"], sal["blocks.layers.2"]
    assert layer1.kept is not None and len(layer1.kept) == 32
    # the kept tokens are the 32 most salient of layer 1, and they are exactly the tokens layer 2 sees
    assert set(layer1.kept.tolist()) == set(layer1.scores.topk(32).indices.tolist())
    assert torch.equal(layer2.positions, layer1.kept)
    assert torch.equal(ins.attention[2].positions, layer1.kept)
    assert ((layer1.scores > 0) & (layer1.scores < 1)).all()
    mask = keep_mask(layer1)
    assert mask.shape == (8, 8) and int(np.nansum(mask)) == 32 and int((mask == 0).sum()) == 32
    grid = received_attention(ins.attention[2])
    assert np.isnan(grid[0]).sum() == 32  # dropped tokens have no attention
    assert np.isnan(grid[0].reshape(-1)[layer1.kept.numpy()]).sum() == 0


def test_shared_attention_layer_still_reports_its_token_drop(digits_pre):
    ins = inspect_model(_model("saliency-small"), _digit(digits_pre))  # layer 1 reuses layer 0's map and drops
    names = {s.name: s for s in ins.saliency}
    assert "blocks.layers.1" in names and len(names["blocks.layers.1"].kept) == 32
    assert torch.isnan(names["blocks.layers.1"].scores).all()  # no saliency head of its own


def test_router_decisions_equal_the_models_hard_decisions(trained, digits_pre):
    from edgeconv.models import load_model

    model, ck = load_model(trained())
    for i in range(12):
        x = _digit(ck["preprocessing"], i)
        ins = inspect_model(model, x)
        with torch.no_grad():
            probs = model(x.unsqueeze(0)).softmax(-1)[0]  # a plain forward, no inspection hooks
        hard = {n: (bool(b.last_route[0]), float(b.last_p_attn[0])) for n, b in routers(model)}
        assert torch.allclose(ins.probs, probs, atol=1e-6)  # inspecting did not change the answer
        assert [r.name for r in ins.routes] == list(hard)
        for r in ins.routes:
            took_attn, p = hard[r.name]
            assert (r.route == "attn") == took_attn and r.p_attn == pytest.approx(p)
            assert (r.p_attn > r.threshold) == took_attn
            rec = next(a for a in ins.attention if a.name == f"{r.name}.attn")
            assert rec.taken == took_attn  # conv-routed maps are marked not used
    assert ins.attention and all(a.heads == 4 for a in ins.attention)


@pytest.mark.parametrize("name", ATTENTION_FAMILIES)
def test_every_attention_family_writes_pngs(name, tmp_path, digits_pre):
    from PIL import Image

    model = _model(name)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, preprocessing=digits_pre, classes=[str(i) for i in range(10)])
    rep = inspect_checkpoint(ckpt, ["digits:5"], tmp_path / "out")
    files = rep["images"][0]["files"]
    expected = (
        {"digits5_attention.png"}
        | ({"digits5_router.png"} if name.startswith("routed") else set())
        | ({"digits5_saliency.png"} if name.startswith("saliency") else set())
    )
    assert {p.rsplit("/", 1)[-1] for p in files} == expected
    n_layers = len(rep["images"][0]["attention"])
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG"
            w, h = im.size
        if f.endswith("_attention.png"):
            heads = max(a["heads"] for a in rep["images"][0]["attention"])
            assert w > 150 * (heads + 1) and h > 150 * n_layers  # one panel per head and layer
            # not a blank canvas: the overlay has many distinct colours
            assert len(np.unique(np.asarray(Image.open(f).convert("RGB")).reshape(-1, 3), axis=0)) > 50
    on_disk = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert on_disk["images"][0]["label"] == rep["images"][0]["label"]


def test_image_inputs_are_checked(tmp_path, digits_pre):
    from PIL import Image

    name, x01, label = load_image("digits:7", digits_pre)
    assert name == "digits7" and x01.shape == (1, 32, 32) and 0 <= label < 10
    with pytest.raises(EdgeconvError, match="test split has"):
        load_image("digits:100000", digits_pre)
    with pytest.raises(EdgeconvError, match="digits:N"):
        load_image("digits:x", digits_pre)
    with pytest.raises(EdgeconvError, match="no such image"):
        load_image(str(tmp_path / "missing.png"), digits_pre)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(EdgeconvError, match="junk.png: unreadable image"):
        load_image(str(tmp_path / "junk.png"), digits_pre)
    Image.fromarray(np.zeros((16, 24), np.uint8), mode="L").save(tmp_path / "small.png")
    assert load_image(str(tmp_path / "small.png"), digits_pre)[1].shape == (1, 32, 32)  # resized, centre-cropped
    Image.fromarray(np.full((32, 32), 200, np.uint8), mode="L").save(tmp_path / "ok.png")
    name, x01, label = load_image(str(tmp_path / "ok.png"), digits_pre)
    assert label is None and torch.allclose(x01, torch.full((1, 32, 32), 200 / 255))


def test_inspect_cli(trained, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    res = CliRunner().invoke(app, ["inspect", str(trained()), "digits:0", "digits:1", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "inspect.json").read_text())
    assert [im["image"] for im in rep["images"]] == ["digits0", "digits1"]
    assert all(len(im["routes"]) == 2 for im in rep["images"])
    assert (tmp_path / "o" / "digits1_router.png").is_file()
