"""Memory and speed of `edgeconv eval` on JPEG image folders of two sizes: does peak memory stay flat as files grow?

(a) Two ImageNet-layout folders of digits JPEGs of mixed sizes (edgeconv.data.digitsfolder) are written under --work, or
reused when their MANIFEST.json matches: --small (default 20000) and --large (default 80000) train images, --val
(default 2000) val images each, plus --corrupt / --truncated broken files per split (default 20 each).

(b) For each folder, with --ckpt (a model trained elsewhere, e.g. on one of these folders or on RGB digits):

    python -m edgeconv eval CKPT --data imagefolder:FOLDER --split train --json eval-NAME.json

runs as a subprocess while its memory is measured, and a table gives, per folder: wall time, images/s, and peak
memory three ways (see the legend printed under it), then the large/small ratio of each. A streaming loader keeps
the ratio near 1; one that holds every decoded image grows with the file count (about 4x here).

    python benchmarks/folders.py --work /data/foldersbench --ckpt rgb-digits.pt --json folders.json
    python benchmarks/folders.py --work /tmp/fb --small 200 --large 800        # (a) only: no --ckpt

Generation is about 1000-2000 files/s per core (--workers, default all cores), mostly PIL's JPEG encoder and file
creation; the two default folders hold about 104k files, ~420 MB on a file system of 4 KiB blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx2", "amx_int8", "asimddp")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MiB = 1024 * 1024


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------- the CPU
def cpu_summary() -> dict:
    """CPU model, cores and the INT8-relevant flags (what `grep -o 'avx512_vnni|avx_vnni|avx2' /proc/cpuinfo` shows)."""
    from edgeconv.runtime.hostcpu import cpu_info

    info = cpu_info()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(val.split())
    return {
        "model": info["model"],
        "arch": info["arch"],
        "usable_cores": info["usable_cores"],
        "int8_flags": [f for f in INT8_FLAGS if f in flags],
        "int8": info["int8"],
    }


# ----------------------------------------------------------------------------------------------------------- (a) data
def folder_name(n_train: int, n_val: int, args) -> str:
    return (
        f"digits-train{n_train}-val{n_val}-seed{args.seed}-px{args.min_size}-{args.max_size}"
        f"-bad{args.corrupt}-trunc{args.truncated}"
    )


def manifest_matches(m: dict, n_train: int, n_val: int, args) -> bool:
    try:
        return (
            m["generator"] in ("edgeconv.data.digitsfolder", "edgeconv.digitsfolder")  # the name before the package layout
            and m["seed"] == args.seed
            and (m["min_size"], m["max_size"]) == (args.min_size, args.max_size)
            and (m["corrupt"], m["truncated"]) == (args.corrupt, args.truncated)
            and m["splits"]["train"]["images"] == n_train
            and m["splits"]["val"]["images"] == n_val
        )
    except (KeyError, TypeError):
        return False


def ensure_folder(work: Path, n_train: int, n_val: int, args) -> tuple[Path, dict, dict]:
    """(folder, manifest, {"generated": bool, "seconds", "files_per_s"}): reuse a matching folder or write it."""
    from edgeconv.data.digitsfolder import FORMAT_VERSION, write_digits_folder

    folder = work / folder_name(n_train, n_val, args)
    mpath = folder / "MANIFEST.json"
    if mpath.is_file():
        try:
            m = json.loads(mpath.read_text())
        except (OSError, ValueError):
            m = {}
        if manifest_matches(m, n_train, n_val, args) and m.get("version") == FORMAT_VERSION:
            _log(f"reusing {folder} (its MANIFEST.json matches)")
            return folder, m, {"generated": False}
    if folder.exists():
        # an interrupted or older run of this script: only a folder holding nothing but what the generator writes
        # is removed, never anything else
        extra = [p.name for p in folder.iterdir() if p.name not in {"train", "val", "MANIFEST.json", "MANIFEST.json.tmp"}]
        if extra:
            raise SystemExit(f"error: {folder} exists and holds {extra[0]!r}, which the generator did not write")
        _log(f"removing {folder} (incomplete or from other settings)")
        shutil.rmtree(folder)
    _log(f"writing {folder} ({n_train} train + {n_val} val images, {args.workers} worker(s))")
    t0 = time.perf_counter()
    m = write_digits_folder(
        folder,
        n_train,
        n_val,
        seed=args.seed,
        corrupt=args.corrupt,
        truncated=args.truncated,
        min_size=args.min_size,
        max_size=args.max_size,
        workers=args.workers,
        progress=not args.no_progress,
    )
    dt = time.perf_counter() - t0
    files = sum(s["files"] for s in m["splits"].values())
    _log(f"wrote {files} files in {dt:.1f} s ({files / dt:.0f} files/s)")
    return folder, m, {"generated": True, "seconds": round(dt, 2), "files_per_s": round(files / dt, 1)}


# ---------------------------------------------------------------------------------------------------- (b) measurement
def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # the command name (field 2) is in parentheses and may hold spaces: fields after the last ')' are fixed
        out[int(d)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p, pp in _ppid_map().items():
        children.setdefault(pp, []).append(p)
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            seen.append(c)
            todo.append(c)
    return seen


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return None


class Sampler(threading.Thread):
    """Every `interval` s: the main process's VmHWM, and the summed RSS of it and all its descendants."""

    def __init__(self, pid: int, interval: float, timeout: float | None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.timeout = pid, interval, timeout
        self.stop = threading.Event()
        self.main_hwm = 0
        self.tree_peak = 0
        self.max_procs = 1
        self.timed_out = False
        self.have_proc = Path("/proc/self/statm").exists()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            if self.have_proc:
                hwm = _hwm(self.pid)
                if hwm:
                    self.main_hwm = max(self.main_hwm, hwm)
                kids = _descendants(self.pid)
                self.max_procs = max(self.max_procs, 1 + len(kids))
                self.tree_peak = max(self.tree_peak, _rss(self.pid) + sum(_rss(k) for k in kids))
            if self.timeout and time.monotonic() - t0 > self.timeout:
                self.timed_out = True
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    pass
                return
            self.stop.wait(self.interval)


def run_eval(ckpt: Path, folder: Path, json_path: Path, log_path: Path, args) -> dict:
    cmd = [sys.executable, "-m", "edgeconv", "eval", str(ckpt), "--data", f"imagefolder:{folder}"]
    cmd += ["--split", "train", "--json", str(json_path), *args.eval_arg]
    json_path.unlink(missing_ok=True)
    _log("running " + " ".join(cmd))
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(p.pid, args.sample_interval, args.timeout)
        sampler.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait for it again
    rec: dict = {
        "rc": p.returncode,
        "timed_out": sampler.timed_out,
        "wall_s": round(wall, 2),
        # Linux: ru_maxrss of a reaped child is the larger of its own peak and its reaped children's (in KiB)
        "maxrss_wait4_mib": round(ru.ru_maxrss * (1 if platform.system() == "Darwin" else 1024) / MiB, 1),
        "main_hwm_mib": round(sampler.main_hwm / MiB, 1) if sampler.main_hwm else None,
        "tree_rss_peak_mib": round(sampler.tree_peak / MiB, 1) if sampler.tree_peak else None,
        "max_processes": sampler.max_procs,
        "cpu_user_s": round(ru.ru_utime, 1),
        "cpu_sys_s": round(ru.ru_stime, 1),
        "log": str(log_path),
    }
    if json_path.is_file():
        try:
            res = json.loads(json_path.read_text())
        except ValueError:
            res = {}
        rec["n"] = res.get("n")
        rec["top1"] = res.get("top1")
        data = res.get("data") if isinstance(res.get("data"), dict) else {}
        rec["skipped"] = data.get("skipped")
        for k in ("peak_rss_mib", "peak_rss", "max_rss_mib"):  # if eval reports its own memory, keep it
            if k in res or k in data:
                rec[f"eval_{k}"] = res.get(k, data.get(k))
    if p.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        _log(f"eval failed (exit {p.returncode}{', timed out' if sampler.timed_out else ''}); last lines of {log_path}:")
        for line in tail:
            _log("  " + line)
    return rec


LEGEND = (
    "columns: main MiB = peak RSS of the eval process itself (its VmHWM in /proc, sampled every --sample-interval s);",
    "  maxrss MiB = os.wait4 ru_maxrss of the eval process: the larger of its own peak and that of any one of its",
    "  reaped children (loader workers), one process's peak, never a sum;",
    "  tree MiB = the largest sampled sum of RSS over the eval process and all its descendants (pages shared between",
    "  processes, e.g. after fork, count once per process: an upper bound); procs = most processes seen at once;",
    "  img/s = images evaluated (eval's JSON `n`, else the folder's good train images) / wall s, start-up included;",
    "  skipped = unreadable files eval reported (the folders hold --corrupt + --truncated of them per split)",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder: the image folders, eval JSONs and logs")
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint to evaluate; without it only (a) runs")
    ap.add_argument("--small", type=int, default=20000, help="train images of the small folder")
    ap.add_argument("--large", type=int, default=80000, help="train images of the large folder")
    ap.add_argument("--val", type=int, default=2000, help="val images of each folder")
    ap.add_argument("--corrupt", type=int, default=20, help="random-byte .jpg files per split")
    ap.add_argument("--truncated", type=int, default=20, help="truncated JPEGs per split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-size", type=int, default=24)
    ap.add_argument("--max-size", type=int, default=96)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generator processes")
    ap.add_argument(
        "--eval-arg", action="append", default=[], help="extra argument for `edgeconv eval` (repeatable, e.g. --eval-arg=-v)"
    )
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before an eval run is killed")
    ap.add_argument("--sample-interval", type=float, default=0.1, help="seconds between memory samples")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar while generating")
    args = ap.parse_args()
    if args.small >= args.large:
        ap.error("--small must be smaller than --large")
    if args.ckpt is not None and not args.ckpt.is_file():
        ap.error(f"--ckpt {args.ckpt}: no such file")

    import sklearn.datasets  # noqa: F401 - imported before generation is timed
    from rich.console import Console

    import edgeconv.data.sources  # noqa: F401
    from edgeconv.common.console import console, rows_table
    from edgeconv.common.errors import EdgeconvError

    if not console.is_terminal:  # piped to a file: do not squeeze the tables into 80 columns
        console = Console(width=160)

    cpu = cpu_summary()
    console.print(
        f"CPU: {cpu['model']} ({cpu['arch']}, {cpu['usable_cores']} usable cores); "
        f"INT8 flags: {' '.join(cpu['int8_flags']) or 'none of ' + ', '.join(INT8_FLAGS)} -> {cpu['int8']}",
        highlight=False,
    )
    args.work.mkdir(parents=True, exist_ok=True)
    folders = []
    try:
        for label, n in (("small", args.small), ("large", args.large)):
            folder, m, gen = ensure_folder(args.work, n, args.val, args)
            folders.append({"label": label, "folder": str(folder), "manifest": m, "generation": gen})
    except EdgeconvError as e:
        raise SystemExit(f"error: {e}") from None
    console.print(
        rows_table(
            [
                {
                    "folder": f["label"],
                    "train files": f["manifest"]["splits"]["train"]["files"],
                    "val files": f["manifest"]["splits"]["val"]["files"],
                    "generated": "yes" if f["generation"]["generated"] else "reused",
                    "gen s": f["generation"].get("seconds"),
                    "files/s": f["generation"].get("files_per_s"),
                }
                for f in folders
            ],
            title="image folders",
        )
    )
    result: dict = {"cpu": cpu, "argv": sys.argv, "folders": folders, "runs": [], "ratios": {}}
    if args.ckpt is None:
        console.print("no --ckpt: eval runs skipped")
    else:
        for f in folders:
            folder = Path(f["folder"])
            run = run_eval(
                args.ckpt, folder, args.work / f"eval-{f['label']}.json", args.work / f"eval-{f['label']}.log", args
            )
            good = f["manifest"]["splits"]["train"]["images"]
            n = run.get("n") or good
            run.update(
                label=f["label"],
                files=f["manifest"]["splits"]["train"]["files"],
                images=n,
                images_per_s=round(n / run["wall_s"], 1) if run["rc"] == 0 and run["wall_s"] > 0 else None,
            )
            result["runs"].append(run)
        rows = [
            {
                "folder": r["label"],
                "files": r["files"],
                "images": r["images"],
                "main MiB": r["main_hwm_mib"],
                "maxrss MiB": r["maxrss_wait4_mib"],
                "tree MiB": r["tree_rss_peak_mib"],
                "procs": r["max_processes"],
                "wall s": r["wall_s"],
                "img/s": r["images_per_s"],
                "top1 %": r.get("top1"),
                "skipped": r.get("skipped"),
                "rc": r["rc"],
            }
            for r in result["runs"]
        ]
        small, large = result["runs"]
        for key in ("main_hwm_mib", "maxrss_wait4_mib", "tree_rss_peak_mib", "wall_s"):
            a, b = small.get(key), large.get(key)
            result["ratios"][key] = round(b / a, 3) if a and b else None
        ratio_row = {"folder": "large/small", "files": round(large["files"] / small["files"], 2)}
        ratio_row.update(
            {
                "main MiB": result["ratios"]["main_hwm_mib"],
                "maxrss MiB": result["ratios"]["maxrss_wait4_mib"],
                "tree MiB": result["ratios"]["tree_rss_peak_mib"],
                "wall s": result["ratios"]["wall_s"],
            }
        )
        console.print(rows_table([*rows, ratio_row], title="edgeconv eval --split train on each folder"))
        print("\n".join(LEGEND))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        _log(f"wrote {args.json}")
    if any(r["rc"] != 0 for r in result["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
