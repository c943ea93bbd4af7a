"""`edgeconv import` of a user's own nn.Module (package.module:factory): weights in, a checkpoint that reloads only
when the user names the code, and the chain prune -> export -> validate on it. (timm imports: tests/test_timm.py.)"""

from __future__ import annotations

import pickle
import sys
import textwrap

import pytest
import torch

from edgeconv.common.errors import EdgeconvError

MODULE = textwrap.dedent(
    '''
    import torch
    import torch.nn as nn


    class Net(nn.Module):
        """A user's model on nn.MultiheadAttention (batch_first) with a plain MLP."""

        def __init__(self, num_classes, in_chans, dim=32, heads=4):
            super().__init__()
            self.embed = nn.Conv2d(in_chans, dim, 8, stride=8)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            a, _ = self.attn(t, t, t)
            t = self.norm(t + a)
            return self.head((t + self.mlp(t)).mean(1))


    def build(num_classes, in_chans):
        return Net(num_classes, in_chans)
    '''
)


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A folder holding the user's module `mynets_<id>` as the current folder; the factory's name."""
    name = f"mynets_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    from edgeconv.common import trust as trust_registry
    from edgeconv.models import user_module

    monkeypatch.setattr(trust_registry, "_TRUSTED", set())
    monkeypatch.delenv(user_module.TRUST_ENV, raising=False)
    yield f"{name}:build"
    sys.modules.pop(name, None)


def IMPORT(factory, weights, out):
    """`edgeconv import` arguments for the fixture module at digits' 1x32x32 with 10 classes."""
    return ("import", factory, weights, "--classes", "10", "--img-size", "32", "--in-chans", "1", "-o", out)


def _reference(user_code: str):
    """The user's module loaded apart (not as `mynets_*`, so edgeconv's own import from the folder is tested)."""
    import importlib.util

    name = user_code.split(":")[0]
    spec = importlib.util.spec_from_file_location(f"ref_{name}", f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_import_a_users_module_reloads_only_when_the_user_names_its_code(cli, user_code, tmp_path, monkeypatch):
    from edgeconv.common import trust as trust_registry
    from edgeconv.models import load_model, user_module

    mod = _reference(user_code)
    torch.manual_seed(1)
    net = mod.build(10, 1).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 7}, tmp_path / "w.pth")
    code, out = cli(*IMPORT(user_code, tmp_path / "w.pth", tmp_path / "m.pt"))
    assert code == 0, out
    assert "imported" in out and "DDP" in out
    model, ckpt = load_model(tmp_path / "m.pt")  # named on the command line above: trusted in this process
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
    assert ckpt["config"]["factory"] == user_code and ckpt["extra"]["imported_from"]["weights"].endswith("epoch 7")
    assert ckpt["preprocessing"]["size"] == 32 and ckpt["classes"] == [str(i) for i in range(10)]

    monkeypatch.setattr(trust_registry, "_TRUSTED", set())  # a new process: the file alone imports nothing
    sys.modules.pop(user_code.split(":")[0], None)
    with pytest.raises(EdgeconvError, match=rf"imports only when you name it: edgeconv --trust-module {user_code}"):
        load_model(tmp_path / "m.pt")
    assert user_code.split(":")[0] not in sys.modules
    code, out = cli("export", tmp_path / "m.pt", "-o", tmp_path / "m.onnx")
    assert code != 0 and "--trust-module" in out and "Traceback" not in out
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.setenv(user_module.TRUST_ENV, user_code)
    load_model(tmp_path / "m.pt")


def test_a_users_module_is_pruned_exported_and_validated(cli, user_code, tmp_path):
    """The chain on a user's own nn.MultiheadAttention model: heads pruned structurally with num_heads/head_dim
    true, the plain MLP's hidden channels found by Torch-Pruning's graph and pruned, the checkpoint reloads without
    tracing, and exports to ONNX that `validate` finds equal to PyTorch."""
    from edgeconv.models import load_model

    mod = _reference(user_code)
    torch.manual_seed(0)
    torch.save(mod.build(10, 1).state_dict(), tmp_path / "w.pt")
    assert cli(*IMPORT(user_code, tmp_path / "w.pt", tmp_path / "m.pt"))[0] == 0
    code, out = cli(
        "--trust-module",
        user_code,
        "prune",
        tmp_path / "m.pt",
        "--heads",
        "0.5",
        "--channels",
        "0.5",
        "--batches",
        "4",
        "--eval-on-train",
        "--data",
        "digits",
        "-o",
        tmp_path / "p.pt",
    )
    assert code == 0, out
    pruned, ckpt = load_model(tmp_path / "p.pt")
    attn = pruned.net.attn
    assert attn.num_heads == 2 and attn.head_dim == 8 and attn.embed_dim == 32
    assert pruned.net.mlp[0].out_features == pruned.net.mlp[2].in_features == 32  # found by the dependency graph
    assert ckpt["config"]["structure"]["net.mlp.2"]["graph"] == [["net.mlp.0", "out"]]
    code, out = cli("--trust-module", user_code, "export", tmp_path / "p.pt", "-o", tmp_path / "p.onnx")
    assert code == 0, out
    code, out = cli("--trust-module", user_code, "validate", tmp_path / "p.onnx", "--data", "digits")
    assert code == 0, out


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00garbage" * 10, "corrupt or truncated weights file"),
        (pickle.dumps({"state_dict": _Evil()}, protocol=2), "refusing to load"),
        (None, "weights do not fit"),
    ],
    ids=["random-bytes", "malicious-pickle", "wrong-shapes"],
)
def test_import_refuses_bad_weights_in_one_line_and_writes_nothing(cli, user_code, tmp_path, content, message):
    w = tmp_path / "w.pt"
    if content is None:
        torch.save({"embed.weight": torch.zeros(3, 3)}, w)
    else:
        w.write_bytes(content)
    code, out = cli(*IMPORT(user_code, w, tmp_path / "m.pt"))
    assert code == 2 and message in out and "Traceback" not in out and "pwned" not in out
    assert not (tmp_path / "m.pt").exists()


def test_import_refuses_bad_options_before_reading_anything(cli, user_code, tmp_path):
    torch.save({}, tmp_path / "w.pt")
    for args, message in [
        (["--classes", "1"], "between 2 and 100000"),
        (["--classes", "a,a,b"], "repeat"),
        (["--classes", "10", "--mean", "0.5,x"], "comma-separated numbers"),
        (["--classes", "10", "--std", "0,1,1"], "--std must be in"),
        (["--classes", "10", "--crop-pct", "2"], "--crop-pct must be in"),
        (["--classes", "10", "--interpolation", "magic"], "--interpolation must be one of"),
    ]:
        code, out = cli("import", user_code, tmp_path / "w.pt", "--img-size", "32", *args, "-o", tmp_path / "m.pt")
        assert code == 2 and message in out, (args, out)
    code, out = cli("import", "resformer-tiny", tmp_path / "w.pt", "--classes", "10", "-o", tmp_path / "m.pt")
    assert code == 2 and "zoo models train" in out
    code, out = cli("import", user_code, tmp_path / "w.pt", "--classes", "10", "--img-size", "32", "-o", tmp_path / "w.pt")
    assert code == 2 and "w.pt" in out
