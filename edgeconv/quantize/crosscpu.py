"""Score ONNX files on another x86 CPU class than this machine's, through qemu-user's CPU models.

qemu-user emulates x86 instruction sets in software (no AVX-512, so every qemu CPU model lacks VNNI); onnxruntime
picks its kernels from the CPUID it sees, so under `qemu-x86_64 -cpu Haswell` it runs the AVX2 U8S8 kernels whose
int16 pair sums saturate. That lets a VNNI machine measure what an AVX2-only CPU computes. Used by the tests and
by benchmarks/int8_cpus.py; nothing here is needed at run time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeconv.common.errors import EdgeconvError

SCORE = """
import sys, numpy as np
from edgeconv.runtime.onnxrt import session
d = np.load(sys.argv[1]); x, y = d["x"], d["y"]
for path in sys.argv[2:]:
    s = session(path)
    n = s.get_inputs()[0].name
    p = np.concatenate([s.run(None, {n: x[i:i + 64]})[0] for i in range(0, len(x), 64)]).argmax(1)
    print(float((p == y).mean() * 100))
"""


def qemu() -> str | None:
    return shutil.which("qemu-x86_64")


def score_files(
    files: list[Path], x: np.ndarray, y: np.ndarray, qemu_cpu: str | None = None, timeout: float = 3600
) -> list[float]:
    """Top-1 % of each file under a default onnxruntime session, natively or under `qemu-x86_64 -cpu qemu_cpu`
    (a fresh Python process either way, so both columns are measured alike)."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-crosscpu-") as tmp:
        npz, script = Path(tmp) / "data.npz", Path(tmp) / "score.py"
        np.savez(npz, x=x.astype(np.float32), y=y)
        script.write_text(SCORE)
        cmd = [sys.executable, str(script), str(npz), *map(str, files)]
        if qemu_cpu:
            if qemu() is None:
                raise EdgeconvError("qemu-x86_64 not found (apt install qemu-user)")
            cmd = [qemu(), "-cpu", qemu_cpu, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise EdgeconvError(f"scoring under {qemu_cpu or 'this CPU'} failed: {tail[0][:200]}")
    return [float(v) for v in proc.stdout.split()]
