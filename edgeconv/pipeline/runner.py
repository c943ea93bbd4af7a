"""Run a checked pipeline in one run folder, re-using every step whose inputs and options are unchanged.

Layout: `RUN/<step>/` holds a step's artifacts and `step.json` (its cache key, outputs with their sha256, metrics);
`RUN/run.json` records the last run's statuses; `RUN/report.md` and `RUN/report.json` summarise it.

A step's key is the sha256 of: the step name, its options, the pipeline's data and seed (with a content hash of a
data folder or file), the sha256 of every input artifact and of every file an option names, and the edgeconv
version. A step is skipped when its `step.json` has the same key and its outputs still hash to what it recorded;
changing one option therefore re-runs that step, and the steps after it re-run because their inputs' hashes change.
`step.json` is removed before a step runs and written after it finishes, so an interrupted or failed step is
never taken for a finished one, while earlier steps' folders are left as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from edgeconv import __version__, artifacts
from edgeconv.common.errors import EdgeconvError
from edgeconv.pipeline.config import PipelineConfig, PipelineConfigError
from edgeconv.pipeline.step import Artifact, StepContext, StepResult
from edgeconv.pipeline.steps import STEPS


class PipelineStepError(EdgeconvError):
    """A step failed; earlier steps' artifacts are intact. `outcomes` has every step's status."""

    def __init__(self, message: str, outcomes: list["StepOutcome"]):
        super().__init__(message)
        self.outcomes = outcomes


@dataclass
class StepOutcome:
    step: str
    status: str  # ran | cached | failed | not run
    key: str = ""
    seconds: float = 0.0
    message: str = ""
    record: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "status": self.status,
            "key": self.key,
            "seconds": round(self.seconds, 2),
            "message": self.message,
        }


@dataclass
class RunResult:
    run_dir: Path
    outcomes: list[StepOutcome]
    report: dict

    def statuses(self) -> dict[str, str]:
        return {o.step: o.status for o in self.outcomes}


class _Hasher:
    """sha256 of files and folders, each computed once per run."""

    def __init__(self) -> None:
        self._memo: dict[Path, str] = {}

    def __call__(self, path: str | Path) -> str:
        p = Path(path).resolve()
        if p not in self._memo:
            if p.is_dir():
                h = hashlib.sha256()
                for f in sorted(x for x in p.rglob("*") if x.is_file()):
                    h.update(f.relative_to(p).as_posix().encode() + b"\0" + artifacts.file_sha256(f).encode())
                self._memo[p] = h.hexdigest()
            else:
                self._memo[p] = artifacts.file_sha256(p)
        return self._memo[p]

    def forget(self, folder: Path) -> None:
        """Drop memoised hashes under a folder a step is about to rewrite."""
        root = Path(folder).resolve()
        self._memo = {p: h for p, h in self._memo.items() if root not in p.parents and p != root}


def _data_fingerprint(text: str, hasher: _Hasher) -> str:
    from edgeconv.data.spec import DataSpec

    spec = DataSpec.parse(text)
    if spec.kind == "digits":
        import sklearn

        return f"digits/sklearn-{sklearn.__version__}"
    if spec.bundled:
        from edgeconv.data.sources import bundled_fingerprint

        return f"{spec.kind}/{bundled_fingerprint(spec.kind)}"
    return f"{spec.kind}/{hasher(str(spec.path))}"


def step_key(cfg: PipelineConfig, name: str, opts, inputs: dict[str, Artifact], hasher: _Hasher) -> str:
    opt_dict = dataclasses.asdict(opts)
    files = {}
    for f in dataclasses.fields(opts):
        v = opt_dict[f.name]
        if f.metadata.get("path") and v:
            files[f.name] = hasher(v)
        if f.name == "data" and v:
            files["data"] = _data_fingerprint(v, hasher)
    payload = {
        "step": name,
        "options": opt_dict,
        "option_files": files,
        "data": _data_fingerprint(cfg.pipeline.data, hasher),
        "seed": cfg.pipeline.seed,
        "inputs": {k: hasher(a.path) for k, a in sorted(inputs.items())},
        "edgeconv": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_record(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def _intact(rec: dict, run_dir: Path, hasher: _Hasher) -> bool:
    """Every output the record lists lies inside the run folder and still exists with the recorded content (a
    record naming a file elsewhere - an absolute path, `..` - is not trusted: the step runs again)."""
    root = run_dir.resolve()
    for rel in [o.get("path", "") for o in rec.get("outputs", [])] + list(rec.get("figures", [])):
        p = (run_dir / str(rel)).resolve()
        if not str(rel) or Path(str(rel)).is_absolute() or not p.is_relative_to(root):
            return False
    for out in rec.get("outputs", []):
        p = run_dir / out["path"]
        if not p.is_file() or hasher(p) != out["sha256"]:
            return False
    return all((run_dir / f).is_file() for f in rec.get("figures", []))


def _record(key: str, res: StepResult, run_dir: Path, seconds: float, hasher: _Hasher) -> dict:
    outs = []
    for a in res.outputs:
        p = Path(a.path)
        outs.append(
            {
                "kind": a.kind,
                "path": p.resolve().relative_to(run_dir.resolve()).as_posix(),
                "label": a.label,
                "sha256": hasher(p),
            }
        )
    figs = [Path(f).resolve().relative_to(run_dir.resolve()).as_posix() for f in res.figures]
    return {
        "status": "ok",
        "key": key,
        "edgeconv": __version__,
        "seconds": round(seconds, 2),
        "outputs": outs,
        "metrics": res.metrics,
        "rows": res.rows,
        "figures": figs,
    }


@contextlib.contextmanager
def _stderr_into(path: Path) -> Iterator[None]:
    """Send this process's stderr (fd 2: converter logs, tqdm bars, C++ warnings) into a file while a step runs.

    The step's rich progress bars and the run's own messages go to stdout and stay on the console; the noise of
    third-party converters is kept in the step's folder instead of flooding it.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def run_pipeline(
    cfg: PipelineConfig,
    run_dir: str | Path | None = None,
    *,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    capture_stderr: bool = True,
    rerun: Iterable[str] = (),
) -> RunResult:
    """Run (or re-use) every step in order, then write report.md / report.json. Raises PipelineStepError.

    With `capture_stderr`, what steps write to stderr goes to `RUN/<step>/step.log`. Steps named in `rerun` run
    even when cached (e.g. to measure `bench` again); the steps after them follow the usual rule."""
    import torch

    from edgeconv.common.console import console
    from edgeconv.pipeline.summary import write_report

    log = log or (lambda msg: console.print(msg, highlight=False))
    rerun = set(rerun)
    unknown = rerun - {s.name for s in cfg.steps}
    if unknown:
        raise PipelineConfigError(
            f"--rerun {', '.join(sorted(unknown))}: not a step of {cfg.source} "
            f"(steps: {', '.join(s.name for s in cfg.steps)})"
        )
    run_dir = Path(run_dir) if run_dir else Path("runs") / cfg.pipeline.name
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.pipeline.threads)
    hasher = _Hasher()
    available: dict[str, Artifact] = {}
    records: dict[str, dict] = {}
    outcomes = [StepOutcome(s.name, "not run") for s in cfg.steps]
    artifacts.atomic_write_json(run_dir / "pipeline.json", cfg.to_dict())

    for i, spec in enumerate(cfg.steps):
        step = STEPS[spec.name]
        sdir = run_dir / spec.name
        inputs = step.select_inputs(spec.options, available)
        key = step_key(cfg, spec.name, spec.options, inputs, hasher)
        rec_path = sdir / "step.json"
        rec = _read_record(rec_path)
        head = f"[bold][{i + 1}/{len(cfg.steps)}] {spec.name}[/]"
        if (
            spec.name not in rerun
            and rec
            and rec.get("status") == "ok"
            and rec.get("key") == key
            and _intact(rec, run_dir, hasher)
        ):
            outcomes[i] = StepOutcome(spec.name, "cached", key, 0.0, "inputs and options unchanged", rec)
            log(f"{head}: cached ({key[:12]}, made in {rec.get('seconds', 0):.1f} s)")
        else:
            log(f"{head}: running")
            rec_path.unlink(missing_ok=True)
            for stale in ("error.log", "step.log"):
                (sdir / stale).unlink(missing_ok=True)
            sdir.mkdir(parents=True, exist_ok=True)
            hasher.forget(sdir)
            ctx = StepContext(cfg, sdir, inputs, records, show_progress)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                with _stderr_into(sdir / "step.log") if capture_stderr else contextlib.nullcontext():
                    res = step.run(spec.options, ctx)
            except Exception as e:  # noqa: BLE001 - any failure stops the run with one line; details go to error.log
                seconds = time.perf_counter() - t0
                detail = str(e).splitlines()[0] if str(e) else ""
                msg = detail if isinstance(e, EdgeconvError) else f"{type(e).__name__}: {detail}"
                artifacts.atomic_write_text(sdir / "error.log", traceback.format_exc())
                artifacts.atomic_write_json(
                    rec_path, {"status": "failed", "key": key, "message": msg, "seconds": round(seconds, 2)}
                )
                outcomes[i] = StepOutcome(spec.name, "failed", key, seconds, msg)
                _write_run(run_dir, cfg, outcomes, report=True)
                done = [o.step for o in outcomes[:i]]
                kept = f"; artifacts of {', '.join(done)} are kept in {run_dir}" if done else ""
                raise PipelineStepError(
                    f"step '{spec.name}' failed: {msg} (details: {sdir / 'error.log'}){kept}", outcomes
                ) from e
            except BaseException:  # Ctrl-C: the run record says where it stopped, then the interrupt goes on
                outcomes[i] = StepOutcome(
                    spec.name,
                    "interrupted",
                    key,
                    time.perf_counter() - t0,
                    "interrupted; no step.json, so the step runs again next time",
                )
                _write_run(run_dir, cfg, outcomes, report=True)
                raise
            seconds = time.perf_counter() - t0
            rec = _record(key, res, run_dir, seconds, hasher)
            rec["cpu_seconds"] = round(time.process_time() - c0, 2)  # all threads of this process
            artifacts.atomic_write_json(rec_path, rec)
            outcomes[i] = StepOutcome(spec.name, "ran", key, seconds, "", rec)
            log(f"{head}: done in {seconds:.1f} s")
        records[spec.name] = rec
        for out in rec["outputs"]:
            available[out["kind"]] = Artifact(out["kind"], run_dir / out["path"], out["label"])

    _write_run(run_dir, cfg, outcomes)
    report = write_report(run_dir, cfg, outcomes)
    return RunResult(run_dir, outcomes, report)


def _write_run(run_dir: Path, cfg: PipelineConfig, outcomes: list[StepOutcome], report: bool = False) -> None:
    """run.json (the statuses of this run); with `report`, also report.md/json of a run that stopped early, so
    neither describes the previous run. A report that cannot be made then never hides why the run stopped."""
    if report:
        from edgeconv.pipeline.summary import write_report

        try:
            write_report(run_dir, cfg, outcomes)
        except Exception:  # noqa: BLE001 - the step's own error is the one to report
            for stale in ("report.md", "report.json"):
                (run_dir / stale).unlink(missing_ok=True)
    artifacts.atomic_write_json(
        run_dir / "run.json",
        {
            "pipeline": cfg.pipeline.name,
            "source": cfg.source,
            "edgeconv": __version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "steps": [o.to_dict() for o in outcomes],
        },
    )
