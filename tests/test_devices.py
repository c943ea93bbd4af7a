"""Device descriptions: Jetson identity from recorded device files, CPU flags, and `info --device`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime import devices

FIX = Path(__file__).parent / "fixtures" / "jetson"


def test_orin_r36_jetpack6():
    info = devices.jetson_info(FIX / "orin_r36", nvpmodel_text=(FIX / "nvpmodel_maxn.txt").read_text())
    assert info["is_jetson"]
    assert info["model"] == "NVIDIA Jetson AGX Orin Developer Kit"  # trailing NUL removed
    assert (info["l4t"], info["jetpack"], info["board"], info["gcid"]) == ("36.3.0", "6.0", "generic", "36191598")
    assert info["power_mode"] == "MAXN (id 0)"


def test_nano_r32_jetpack4():
    info = devices.jetson_info(FIX / "nano_r32", nvpmodel_text=(FIX / "nvpmodel_maxn_super.txt").read_text())
    assert info["model"] == "NVIDIA Jetson Nano Developer Kit"
    assert (info["l4t"], info["jetpack"], info["board"]) == ("32.7.1", "4.6.x", "t210ref")
    assert info["power_mode"] == "MAXN_SUPER (id 2)"


def test_release_file_alone_identifies_a_jetson():
    info = devices.jetson_info(FIX / "xavier_r35", nvpmodel_text="")
    assert info["is_jetson"] and info["model"] is None
    assert (info["l4t"], info["jetpack"]) == ("35.4.1", "5.1.2")
    assert info["power_mode"].startswith("unknown")


def test_nvpmodel_with_warning_lines_first():
    # layout seen on devices whose fan mode is unset: warnings come before the mode (synthetic arrangement of the
    # recorded MAXN output)
    text = "NVPM WARN: fan mode is not set!\n" + (FIX / "nvpmodel_maxn.txt").read_text()
    assert devices.parse_nvpmodel(text) == {"name": "MAXN", "id": 0}
    assert devices.parse_nvpmodel("command not found") is None


def test_tegra_release_rejects_other_text():
    assert devices.parse_tegra_release("Ubuntu 22.04") is None


def test_non_jetson_says_so_clearly():
    info = devices.jetson_info(FIX / "x86_host")
    assert info["is_jetson"] is False
    with pytest.raises(EdgeconvError, match="not a Jetson.*nv_tegra_release.*--host"):
        devices.require_jetson(FIX / "x86_host")


def test_cpuinfo_recorded_x86():
    info = devices.parse_cpuinfo((FIX / "x86_host/proc/cpuinfo").read_text())
    assert info["model"] == "Intel(R) Xeon(R) Processor @ 2.80GHz"
    assert {"avx2", "avx512f", "avx512_vnni", "fma"} <= set(info["isa"])
    assert "sve" not in info["isa"]


def test_cpuinfo_arm_features_line():
    # the `Features` line format of /proc/cpuinfo on ARM64 (Jetson Orin's Cortex-A78AE reports these flags)
    info = devices.parse_cpuinfo(
        "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
        "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
    )
    assert info["isa"] == ["asimd", "asimdhp", "asimddp", "fphp"]


def test_this_machine_description():
    d = devices.describe_device()
    assert d["cpu"]["logical_cores"] >= 1 and d["cpu"]["arch"]
    assert "torch" in d["runtimes"] and "onnxruntime" in d["runtimes"]
    if not d["cuda"]["available"]:
        assert d["cuda"]["reason"]


def test_cli_info_device_json(tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    out = tmp_path / "dev.json"
    r = CliRunner().invoke(app, ["info", "--device", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert {"host", "cpu", "cuda", "jetson", "runtimes"} <= set(d)
    assert "isa" in r.output
