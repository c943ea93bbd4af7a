"""Parse `tegrastats` lines (JetPack 4, 5 and 6 formats) and sample them while a benchmark runs.

Formats handled (see tests/fixtures/jetson/README.md for the recorded lines):
- optional leading `MM-DD-YYYY HH:MM:SS` timestamp (JetPack 5+);
- `RAM used/totalMB (lfb ...)`, `SWAP used/totalMB (cached NMB)`;
- `CPU [12%@1510,off,...]`, or the older `cpu [17%,13%]@408`;
- `GR3D_FREQ 45%`, `GR3D_FREQ 45%@1300`, `GR3D_FREQ 0%@[510,510]` (or the older `GR3D 3%@76`), `EMC_FREQ 0%@1600`;
- temperatures `name@45.5C`;
- power rails `NAME 4120mW/4120mW` (instant/average, JetPack 5+) or `NAME 3140/3208` (milliwatts without a unit,
  JetPack 4).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

_TS = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]", re.IGNORECASE)
_CPU_OLD_FREQ = re.compile(r"\bcpu \[[^\]]*\]@(\d+)")
_GPU = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@(\[[\d,]*\]|\d+))?")
_EMC = re.compile(r"\bEMC(?:_FREQ)? (\d+)%")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")

# Rails that measure the whole module's input, in order of preference (Orin/Xavier, Nano, TX2 naming).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VDD_SYS_IN")
NOT_RAILS = {"RAM", "SWAP", "IRAM"}
# Sensors a board reports as -256C when absent
_ABSENT_TEMP = -256.0
# TX2/Xavier print a fixed PMIC@100C (a placeholder, not a reading): kept in temps_c, left out of the hottest sensor
_PLACEHOLDER_TEMPS = {"PMIC"}


@dataclass
class TegraSample:
    timestamp: str | None = None
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    cpu_load: list[int | None] = field(default_factory=list)  # None = core off
    cpu_freq_mhz: list[int | None] = field(default_factory=list)
    gpu_load: int | None = None
    gpu_freq_mhz: list[int] = field(default_factory=list)
    emc_load: int | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (instant, average)

    def input_power_mw(self) -> tuple[float | None, str | None]:
        """Module input power (instant) and where it came from: an input rail, else the sum of all rails."""
        for name in INPUT_RAILS:
            if name in self.rails_mw:
                return float(self.rails_mw[name][0]), name
        if self.rails_mw:
            return float(sum(v[0] for v in self.rails_mw.values())), "sum of rails"
        return None, None


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.strip("[]").split(",") if v.strip().isdigit()]


def parse_line(line: str) -> TegraSample | None:
    """One tegrastats line -> TegraSample; None for a line that carries no RAM field (not a tegrastats line)."""
    s = TegraSample()
    m = _TS.match(line)
    if m:
        s.timestamp = m.group(1)
        line = line[m.end() :]
    m = _RAM.search(line)
    if not m:
        return None
    s.ram_used_mb, s.ram_total_mb = int(m.group(1)), int(m.group(2))
    m = _SWAP.search(line)
    if m:
        s.swap_used_mb = int(m.group(1))
    m = _CPU.search(line)
    if m:
        old_freq = _CPU_OLD_FREQ.search(line)
        for core in m.group(1).split(","):
            core = core.strip()
            if core == "off" or not core:
                s.cpu_load.append(None)
                s.cpu_freq_mhz.append(None)
                continue
            load, _, freq = core.partition("@")
            s.cpu_load.append(int(load.rstrip("%")))
            s.cpu_freq_mhz.append(int(freq) if freq.isdigit() else (int(old_freq.group(1)) if old_freq else None))
    m = _GPU.search(line)
    if m:
        s.gpu_load = int(m.group(1))
        s.gpu_freq_mhz = _int_list(m.group(2)) if m.group(2) else []
    m = _EMC.search(line)
    if m:
        s.emc_load = int(m.group(1))
    for name, val in _TEMP.findall(line):
        if float(val) != _ABSENT_TEMP:
            s.temps_c[name] = float(val)
    for name, inst, avg in _RAIL.findall(line):
        if name not in NOT_RAILS:
            s.rails_mw[name] = (int(inst), int(avg))
    return s


def summarise(samples: list[TegraSample]) -> dict:
    """Mean/max of what a benchmark row cares about: input power, GPU load, RAM, hottest sensor."""
    if not samples:
        return {"samples": 0}
    powers = [(p, src) for p, src in (s.input_power_mw() for s in samples) if p is not None]
    gpu = [s.gpu_load for s in samples if s.gpu_load is not None]
    temps = [
        max(v for k, v in s.temps_c.items() if k not in _PLACEHOLDER_TEMPS)
        for s in samples
        if set(s.temps_c) - _PLACEHOLDER_TEMPS
    ]
    out: dict = {"samples": len(samples), "ram_used_max_mb": max(s.ram_used_mb or 0 for s in samples)}
    if powers:
        vals = [p for p, _ in powers]
        out.update(power_mw_mean=sum(vals) / len(vals), power_mw_max=max(vals), power_source=powers[0][1])
    if gpu:
        out.update(gpu_load_mean=sum(gpu) / len(gpu), gpu_load_max=max(gpu))
    if temps:
        out["temp_max_c"] = max(temps)
    return out


class TegrastatsSampler:
    """Run `tegrastats --interval MS` in the background and collect parsed lines until stopped.

    with TegrastatsSampler() as ts:
        run_benchmark()
    ts.summary()
    """

    def __init__(self, interval_ms: int = 100, exe: str | None = None):
        self.interval_ms = interval_ms
        self.exe = exe or shutil.which("tegrastats")
        self.samples: list[TegraSample] = []
        self.unparsed = 0
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return bool(self.exe) and Path(self.exe).exists()

    def start(self) -> "TegrastatsSampler":
        if not self.available:
            return self
        self._proc = subprocess.Popen(
            [self.exe, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            s = parse_line(line)
            if s is None:
                self.unparsed += 1
            else:
                self.samples.append(s)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._proc = None

    def __enter__(self) -> "TegrastatsSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> dict:
        out = summarise(self.samples)
        if not self.available:
            out["note"] = "tegrastats not found"
        return out
