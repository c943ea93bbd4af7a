"""The command line: models/train/eval/info print what they promise, and bad input of every kind ends in one
readable line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from edgeconv import artifacts
from edgeconv.cli import app

EDGECONV = Path(sys.executable).with_name("edgeconv")


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# --------------------------------------------------------------------------------------------------- commands
def test_help_lists_the_pipeline_in_order_and_every_command_has_an_example(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    out = out[out.index("Commands") :]
    order = [out.find(f" {c} ") for c in ("models", "train", "eval", "export", "quantize", "info")]
    assert all(i >= 0 for i in order) and order == sorted(order), order
    for cmd in app.registered_commands:
        assert "Example: edgeconv" in (cmd.callback.__doc__ or ""), cmd.name


def test_models_lists_every_family_with_params_and_macs(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0
    for fam in ("routed", "acmix", "can", "hvt", "resformer", "saliency"):
        assert f"{fam}-tiny" in out and f"{fam}-small" in out
    assert "timm:NAME" in out and " M " in out and "1x32x32" in out


def test_eval_prints_accuracy_and_routing_and_writes_json(trained, monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "eval", trained(), "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "top1 %" in out and "routing decisions" in out and "blocks.0" in out
    import json

    res = json.loads((tmp_path / "r.json").read_text())
    assert res["n"] == 359 and res["top1"] >= 95.0
    assert sum(res["routing"]["blocks.0"].values()) == 359
    code, out, err = run_cli(monkeypatch, capsys, "eval", trained(), "--routing", "soft", "--json", tmp_path / "soft.json")
    soft = json.loads((tmp_path / "soft.json").read_text())
    assert code == 0 and abs(soft["top1"] - res["top1"]) <= 1.0


def test_eval_on_an_image_folder_uses_the_model_class_order(trained, monkeypatch, capsys, tmp_path):
    from edgeconv.data.sources import default_calib_dir

    sub = tmp_path / "sevens" / "7"
    sub.mkdir(parents=True)
    for f in sorted((default_calib_dir() / "7").glob("*.png")):
        (sub / f.name).write_bytes(f.read_bytes())
    code, out, err = run_cli(
        monkeypatch, capsys, "eval", trained(), "--data", f"imagefolder:{tmp_path / 'sevens'}", "--json", tmp_path / "r.json"
    )
    assert code == 0, err
    import json

    res = json.loads((tmp_path / "r.json").read_text())
    assert list(res["per_class"]) == ["7"] and res["top1"] >= 80.0  # scored as class 7, not as class 0


def test_info_shows_family_params_macs_input_metrics_provenance(trained, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "info", trained())
    assert code == 0, err
    for word in ("family", "routed", "params", "MACs", "[N, 1, 32, 32]", "test_top1", "provenance", "command"):
        assert word in out, word


def test_train_writes_a_checkpoint_that_eval_and_info_read(monkeypatch, capsys, tmp_path):
    from edgeconv.data.sources import default_calib_dir

    files = sorted(default_calib_dir().glob("*/*.png"))[::2]
    x = np.asarray([np.asarray(Image.open(p)) for p in files])
    y = np.array([int(p.parent.name) for p in files])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out_pt = tmp_path / "m.pt"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--model",
        "hvt-tiny",
        "--data",
        f"npz:{tmp_path / 'd.npz'}",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "-o",
        out_pt,
    )
    assert code == 0, err
    assert "trained" in out and out_pt.exists()
    ck = artifacts.read_checkpoint(out_pt)
    assert ck["family"] == "hvt" and ck["provenance"]["command"].startswith("edgeconv train --model hvt-tiny")
    code, out, err = run_cli(monkeypatch, capsys, "info", out_pt)
    assert code == 0 and "hvt" in out


# --------------------------------------------------------------------------------------------------- bad input
def test_missing_checkpoint(monkeypatch, capsys, tmp_path):
    for cmd in ("eval", "info"):
        code, _, err = run_cli(monkeypatch, capsys, cmd, tmp_path / "nope.pt")
        assert_one_line_error(code, err, "no such file", "nope.pt")


def test_a_missing_argument_is_named_as_the_help_lists_it(monkeypatch, capsys):
    # the same upper-case name the help's Arguments table and the path checks ("CKPT: no such file") use
    for cmd, name in [("import", "MODEL"), ("prune", "CKPT"), ("export", "CKPT"), ("quantize", "MODEL"),
                      ("bench", "MODELS"), ("validate", "MODEL"), ("eval", "CKPT"), ("pipeline", "FILE")]:  # fmt: skip
        code, _, err = run_cli(monkeypatch, capsys, cmd)
        assert_one_line_error(code, err, f"Missing argument '{name}'", f"edgeconv {cmd} --help")
        assert f" {name} " in run_cli(monkeypatch, capsys, cmd, "--help")[1]


def test_truncated_and_corrupt_checkpoints(trained, monkeypatch, capsys, tmp_path):
    data = trained().read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    for name in ("half.pt", "noise.pt"):
        for cmd in ("eval", "info"):
            code, _, err = run_cli(monkeypatch, capsys, cmd, tmp_path / name)
            assert_one_line_error(code, err, name, "corrupt or truncated checkpoint")


def test_checkpoint_of_an_unknown_family(trained, monkeypatch, capsys, tmp_path):
    ck = torch.load(trained(), weights_only=True)
    ck["family"] = ck["config"]["family"] = "martian"
    torch.save(ck, tmp_path / "martian.pt")
    code, _, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "martian.pt")
    assert_one_line_error(code, err, "martian.pt", "unknown model family 'martian'")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_code_executing_pickle_is_refused_through_the_installed_command(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"format": artifacts.FORMAT, "payload": _Exploit(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil_legacy.pt", "wb") as f:
        pickle.dump({"format": artifacts.FORMAT, "payload": _Exploit(marker)}, f, protocol=2)
    for name, cmd in (
        ("evil.pt", ["info"]),
        ("evil_legacy.pt", ["eval"]),
        ("evil.pt", ["train", "-o", str(tmp_path / "o.pt"), "--resume"]),
    ):
        r = subprocess.run(
            [str(EDGECONV), *cmd, str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert_one_line_error(r.returncode, r.stderr, name, "refusing to load")
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


def test_images_of_other_sizes_and_channels_are_resized_and_converted(trained, monkeypatch, capsys, tmp_path):
    (tmp_path / "mixed" / "3").mkdir(parents=True)
    Image.fromarray(np.zeros((28, 40), np.uint8), "L").save(tmp_path / "mixed" / "3" / "a.png")
    Image.fromarray(np.zeros((90, 60, 3), np.uint8), "RGB").save(tmp_path / "mixed" / "3" / "b.jpg")
    code, _, _ = run_cli(
        monkeypatch, capsys, "eval", trained(), "--data", f"imagefolder:{tmp_path / 'mixed'}", "--json", tmp_path / "r.json"
    )
    assert code == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["n"] == 2 and res["data"]["skipped"] == 0 and len(res["data"]["file_list_sha256"]) == 64


def test_empty_or_unreadable_image_folder(trained, monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "eval", trained(), "--data", f"imagefolder:{tmp_path / 'empty'}")
    assert_one_line_error(code, err, "no images found")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    code, _, err = run_cli(monkeypatch, capsys, "eval", trained(), "--data", f"imagefolder:{tmp_path / 'broken'}")
    assert_one_line_error(code, err, "no readable images (1 unreadable", "x.png")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "-o",
        tmp_path / "o.pt",
        "--data",
        f"imagefolder:{tmp_path / 'missing'}",
        "--img-size",
        "32",
    )
    assert_one_line_error(code, err, "no such folder")
    assert not (tmp_path / "o.pt").exists()


def test_npz_of_the_wrong_shape(trained, monkeypatch, capsys, tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3, 28, 28), np.float32))
    code, _, err = run_cli(monkeypatch, capsys, "eval", trained(), "--data", f"npz:{tmp_path / 'bad.npz'}")
    assert_one_line_error(code, err, "bad.npz", "[4, 3, 28, 28]", "[N, 1, 32, 32]")


def test_unknown_model_name_and_routing_mode(trained, monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", "--model", "routed-huge", "-o", tmp_path / "o.pt")
    assert_one_line_error(code, err, "unknown model 'routed-huge'", "routed-tiny")
    code, _, err = run_cli(monkeypatch, capsys, "eval", trained(), "--routing", "sometimes")
    assert_one_line_error(code, err, "--routing 'sometimes': unknown", "gated, soft, select")


def test_routing_flag_on_a_model_without_a_router(monkeypatch, capsys, tmp_path):
    from edgeconv.data.sources import digits_preprocessing
    from edgeconv.models import create_model

    path = artifacts.save_checkpoint(
        tmp_path / "can.pt",
        create_model("can-tiny"),
        preprocessing=digits_preprocessing(32),
        classes=[str(i) for i in range(10)],
    )
    code, _, err = run_cli(monkeypatch, capsys, "eval", path, "--routing", "soft")
    assert_one_line_error(code, err, "has no router")


def test_timm_model_without_timm_names_the_extra(monkeypatch, capsys, tmp_path):
    try:
        import timm  # noqa: F401

        pytest.skip("timm is installed in this environment")
    except ImportError:
        pass
    code, _, err = run_cli(monkeypatch, capsys, "train", "--model", "timm:levit_128s", "-o", tmp_path / "t.pt")
    assert_one_line_error(code, err, "timm is not available", "make setup-timm")
    assert not (tmp_path / "t.pt").exists()
