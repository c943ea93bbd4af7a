"""Checkpoints: self-describing, weights_only-loadable, equal outputs after a round trip (pruned ones too),
atomic writes that never leave half a file, and every broken or hostile file refused with one readable error."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgeconv import artifacts
from edgeconv.common.errors import EdgeconvError
from edgeconv.data.sources import digits_preprocessing
from edgeconv.measure.describe import describe
from edgeconv.models import create_model, list_models, load_model
from edgeconv.models.structure import current_structure, keep_unit, prunable_units

TINY = [n for n in list_models() if n.endswith("-tiny")]
CLASSES = [str(i) for i in range(10)]


def _save(model, path: Path, **kw) -> Path:
    return artifacts.save_checkpoint(
        path,
        model,
        preprocessing=digits_preprocessing(32),
        classes=CLASSES,
        provenance_rec=artifacts.provenance("pytest"),
        **kw,
    )


# --------------------------------------------------------------------------------------------------- atomic writes
def test_atomic_path_keeps_the_previous_file_when_the_block_raises(tmp_path):
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        with artifacts.atomic_path(dest) as tmp:
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("boom")
    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # the temp file is gone too


def test_atomic_writes_get_the_mode_of_any_new_file_and_fit_long_names(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this umask
    name = "n" * 250 + ".json"  # the temp file's name must still fit in 255 bytes
    for dest in (tmp_path / "a.json", tmp_path / name):
        artifacts.atomic_write_json(dest, {"a": 1})
        assert dest.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plain.txt", "a.json", name])


def test_atomic_path_creates_nothing_when_the_first_write_fails(tmp_path):
    dest = tmp_path / "sub" / "new.json"
    with pytest.raises(KeyboardInterrupt):
        with artifacts.atomic_path(dest) as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_a_writer_killed_mid_write_leaves_the_old_file_whole(tmp_path):
    dest = tmp_path / "model.pt"
    dest.write_bytes(b"old" * 1000)
    writer = textwrap.dedent(f"""
        import sys, time
        from edgeconv.artifacts import atomic_path
        with atomic_path({str(dest)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"new" * 500)
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
                f.write(b"new" * 500)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert dest.read_bytes() == b"old" * 1000
    leftovers = [p for p in tmp_path.iterdir() if p != dest]
    assert all(p.name.startswith(".model.pt.") and p.suffix == ".tmp" for p in leftovers)  # never a real name


def test_atomic_path_refuses_a_directory_or_an_impossible_parent(tmp_path):
    with pytest.raises(EdgeconvError, match="is a directory"):
        artifacts.atomic_write_text(tmp_path, "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeconvError, match="cannot write"):
        artifacts.atomic_write_text(tmp_path / "file" / "below.json", "x")


def test_atomic_json_round_trip(tmp_path):
    p = artifacts.atomic_write_json(tmp_path / "r.json", {"top1": 97.5, "path": tmp_path})
    import json

    assert json.loads(p.read_text()) == {"top1": 97.5, "path": str(tmp_path)}


# --------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    path = _save(model, tmp_path / f"{name}.pt", metrics={"test_top1": 12.5})
    raw = torch.load(path, weights_only=True)  # the file is plain data + tensors
    assert raw["format"] == artifacts.FORMAT and raw["family"] == model.cfg["family"]
    assert raw["preprocessing"]["size"] == 32 and raw["classes"] == CLASSES
    assert raw["provenance"]["edgeconv_version"] and raw["metrics"] == {"test_top1": 12.5}
    loaded, ck = load_model(path)
    assert not loaded.training
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.slow  # over 10 s: `make test` runs it, `make test-fast` stays a quick loop
def test_trained_checkpoint_round_trips_through_save(trained, tmp_path):
    model, ck = load_model(trained())
    again = artifacts.save_checkpoint(
        tmp_path / "again.pt",
        model,
        preprocessing=ck["preprocessing"],
        classes=ck["classes"],
        metrics=ck["metrics"],
        provenance_rec=artifacts.provenance("pytest copy", trained(), ck),
    )
    model2, ck2 = load_model(again)
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model2(x), model(x))
    assert ck2["provenance"]["parent_sha256"] == artifacts.file_sha256(trained())
    assert len(ck2["provenance"]["chain"]) == len(ck["provenance"].get("chain", [])) + 1


@pytest.mark.parametrize("name", ["routed-tiny", "acmix-tiny", "saliency-small", "resformer-tiny"])
def test_pruned_structure_is_recorded_and_reloads_with_equal_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    units = prunable_units(model)
    heads = next(u for u in units if u.kind == "heads")
    chans = next(u for u in units if u.kind == "channels")
    n_channels = chans.size
    keep_unit(model, heads, torch.tensor([0, heads.size - 1]))
    keep_unit(model, chans, torch.arange(0, n_channels, 2))
    model.cfg["structure"] = current_structure(model)
    path = _save(model, tmp_path / "pruned.pt")
    loaded, ck = load_model(path)
    mods = dict(loaded.named_modules())
    for p in heads.paths:
        assert mods[p].num_heads == 2
    assert mods[chans.paths[0]].hidden == len(range(0, n_channels, 2))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert describe(path)["model"]["pruned structure"] != "none"


def test_resaving_a_model_keeps_tensors_in_extra_state(tmp_path):
    model = create_model("routed-tiny")
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    opt.step()
    path = _save(
        model,
        tmp_path / "m.pt",
        extra={"train_state": {"optimizer": opt.state_dict(), "rng": torch.Generator().get_state()}},
    )
    st = artifacts.read_checkpoint(path)["extra"]["train_state"]
    assert isinstance(st["rng"], torch.Tensor)
    opt2 = torch.optim.AdamW(create_model("routed-tiny").parameters())
    opt2.load_state_dict(st["optimizer"])  # tensors, not their string forms
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_describe_names_family_params_macs_input_metrics_and_provenance(trained):
    d = describe(trained())
    assert d["model"]["family"] == "routed" and d["model"]["variant"] == "tiny"
    assert int(d["model"]["params"].replace(",", "")) > 10_000
    assert int(d["model"]["MACs"].replace(",", "")) > 1_000_000
    assert d["input"]["shape"] == "[N, 1, 32, 32]" and d["input"]["layout"] == "NCHW"
    assert float(d["metrics"]["test_top1"]) > 80
    assert "train" in d["provenance"]["command"] and d["provenance"]["edgeconv"]


# --------------------------------------------------------------------------------------------------- bad files
class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(tmp_path: Path, how: str) -> tuple[Path, Path]:
    marker = tmp_path / "EXECUTED"
    path = tmp_path / f"{how}.pt"
    payload = {"format": artifacts.FORMAT, "family": "routed", "x": _RunsShell(marker)}
    if how == "torch-zip":
        torch.save(payload, path)
    else:  # a legacy (non-zip) pickle, protocol 2 like torch's own legacy format
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    return path, marker


@pytest.mark.parametrize("how", ["torch-zip", "legacy-pickle"])
def test_a_pickle_that_needs_code_execution_is_refused_and_never_run(tmp_path, how):
    path, marker = _hostile(tmp_path, how)
    with pytest.raises(EdgeconvError, match=r"refusing to load.*(system|code)") as e:
        load_model(path)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_a_pickled_class_instance_is_refused(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"format": artifacts.FORMAT, "obj": Path("x")}, path)
    with pytest.raises(EdgeconvError, match="refusing to load: unpickling it would import and run"):
        artifacts.read_checkpoint(path)


def _trained_bytes(trained) -> bytes:
    return trained().read_bytes()


@pytest.mark.parametrize("cut", [0, 100, 0.5, -20])
def test_truncated_checkpoints_are_one_readable_error(trained, tmp_path, cut):
    data = _trained_bytes(trained)
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:n])
    with pytest.raises(EdgeconvError, match="corrupt or truncated checkpoint|an empty file, not a PyTorch checkpoint") as e:
        load_model(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"hello\n", bytes(range(256)) * 4, b"PK\x03\x04" + b"\0" * 64])
def test_garbage_files_are_one_readable_error(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(EdgeconvError, match="corrupt or truncated|refusing to load|a text file, not a PyTorch checkpoint"):
        load_model(path)


def test_missing_file_and_directory_are_named(tmp_path):
    with pytest.raises(EdgeconvError, match="no such file"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(EdgeconvError, match="is a directory"):
        load_model(tmp_path)


def _edited(trained, tmp_path: Path, edit) -> Path:
    ck = torch.load(trained(), weights_only=True)
    edit(ck)
    path = tmp_path / "edited.pt"
    torch.save(ck, path)
    return path


def test_checkpoint_of_an_unknown_family_is_named(trained, tmp_path):
    def martian(ck):
        ck["family"] = ck["config"]["family"] = "martian"

    with pytest.raises(EdgeconvError, match=r"edited.pt: unknown model family 'martian'"):
        load_model(_edited(trained, tmp_path, martian))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda ck: ck["config"].pop("dim"), "recorded config does not build a 'routed' model"),
        (lambda ck: ck.__setitem__("config", "routed"), "'config' is missing or not a dict"),
        (lambda ck: ck.pop("preprocessing"), "'preprocessing' is missing"),
        (lambda ck: ck["preprocessing"].__setitem__("mean", [0.1, 0.2]), "one value per channel"),
        (lambda ck: ck["config"].__setitem__("dim", 64), "weights do not match the recorded config"),
        (lambda ck: ck["state_dict"].__setitem__("head.fc.bias", "oops"), "is not a tensor"),
        (lambda ck: ck.__setitem__("format", "other/1"), "not an edgeconv checkpoint"),
    ],
)
def test_malformed_checkpoints_are_one_readable_error(trained, tmp_path, edit, message):
    with pytest.raises(EdgeconvError, match=message) as e:
        load_model(_edited(trained, tmp_path, edit))
    assert "\n" not in str(e.value)
