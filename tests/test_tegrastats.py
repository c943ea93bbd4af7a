"""tegrastats parsing on recorded lines from real Jetsons (tests/fixtures/jetson/README.md says where each is from)."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from edgeconv.runtime.tegrastats import TegrastatsSampler, parse_line, summarise

FIX = Path(__file__).parent / "fixtures" / "jetson"


def lines(name: str) -> list[str]:
    return [ln for ln in (FIX / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_jetpack4_xavier_line_rails_without_unit():
    s = parse_line(lines("tegrastats_jp4.txt")[0])
    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb) == (14700, 15692, 898)
    assert s.cpu_load == [0] * 8 and s.cpu_freq_mhz == [1190] * 8
    assert s.gpu_load == 0 and s.gpu_freq_mhz == []
    assert s.temps_c["GPU"] == 30.5 and s.temps_c["PMIC"] == 100.0
    assert s.rails_mw["SOC"] == (2936, 2936) and s.rails_mw["SYS5V"] == (3306, 3306)
    assert "RAM" not in s.rails_mw and "SWAP" not in s.rails_mw
    power, source = s.input_power_mw()
    assert source == "sum of rails" and power == 463 + 618 + 2936 + 0 + 309 + 3306


def test_jetpack4_tx2_lines_input_rail_and_frequencies():
    tx2 = [parse_line(ln) for ln in lines("tegrastats_jp4.txt")[1:]]
    assert tx2[0].rails_mw["VDD_IN"] == (3140, 3208)
    assert tx2[0].input_power_mw() == (3140.0, "VDD_IN")
    assert tx2[1].cpu_freq_mhz == [1303, 345, 345, 1419, 1420, 1421]
    assert tx2[1].gpu_freq_mhz == [140]
    assert [t.rails_mw["VDD_IN"][0] for t in tx2[1:]] == [1931, 1776, 1738]
    summary = summarise(tx2[1:])
    assert summary["samples"] == 3 and summary["power_source"] == "VDD_IN"
    assert summary["power_mw_mean"] == pytest.approx((1931 + 1776 + 1738) / 3)
    assert summary["power_mw_max"] == 1931 and summary["temp_max_c"] == 41.0


def test_jetpack6_orin_line_timestamp_mw_units_and_gpc_list():
    s = parse_line(lines("tegrastats_jp6.txt")[0])
    assert s.timestamp == "04-11-2025 10:36:27"
    assert (s.ram_used_mb, s.ram_total_mb) == (4321, 62801)
    assert len(s.cpu_load) == 12 and set(s.cpu_freq_mhz) == {729}
    assert s.gpu_load == 0 and s.gpu_freq_mhz == [0, 0]
    assert s.emc_load == 0
    assert s.rails_mw["VDD_GPU_SOC"] == (2340, 2340) and s.rails_mw["VIN_SYS_5V0"] == (4025, 4025)
    assert "GPU" not in s.temps_c and "CV0" not in s.temps_c  # -256C means the sensor is absent
    assert s.temps_c["CPU"] == pytest.approx(44.562) and s.temps_c["tj"] == pytest.approx(44.343)


def test_legacy_tx1_format_lowercase_cpu_and_gr3d():
    a, b = (parse_line(ln) for ln in lines("tegrastats_legacy.txt"))
    assert a.cpu_load == [17, 13, 29, 5] and a.cpu_freq_mhz == [408] * 4
    assert a.gpu_load == 3 and a.gpu_freq_mhz == [76] and a.emc_load == 1
    assert b.gpu_load == 39 and b.cpu_freq_mhz == [1734] * 4
    assert a.rails_mw == {} and a.input_power_mw() == (None, None)


def test_off_cores_and_non_tegrastats_lines():
    s = parse_line("RAM 1985/7765MB (lfb 107x4MB) CPU [9%@1420,off,off,off] EMC_FREQ 0% GR3D_FREQ 0%")
    assert s.cpu_load == [9, None, None, None]
    assert parse_line("NVPM WARN: fan mode is not set!") is None
    assert parse_line("") is None


@pytest.mark.skipif(sys.platform == "win32", reason="uses a shell script")
def test_sampler_reads_a_running_process(tmp_path):
    # tegrastats itself exists only on Jetsons: a script replays a recorded Orin line at the requested interval
    line = lines("tegrastats_jp6.txt")[0]
    script = tmp_path / "tegrastats"
    script.write_text(
        f"#!/bin/sh\n[ \"$1\" = --interval ] || exit 3\nwhile true; do echo '{line}'; echo 'junk'; sleep 0.02; done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    import time

    with TegrastatsSampler(interval_ms=20, exe=str(script)) as ts:
        time.sleep(0.5)
    summary = ts.summary()
    assert summary["samples"] >= 3
    assert summary["power_mw_mean"] == 2340 + 390 + 4025 + 301
    assert ts.unparsed >= 1
    assert ts._proc is None  # stopped


def test_sampler_without_tegrastats_is_a_no_op(tmp_path):
    ts = TegrastatsSampler(exe=str(tmp_path / "missing"))
    with ts:
        pass
    assert ts.summary() == {"samples": 0, "note": "tegrastats not found"}
