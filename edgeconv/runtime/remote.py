"""`edgeconv bench --host USER@ADDR`: run the same bench on another machine over SSH and bring the JSON back.

Safety: host keys are checked (StrictHostKeyChecking=yes, BatchMode: no prompts), every command is an argument list
(no local shell), remote file names are rewritten to `[A-Za-z0-9._-]` and every remote command is built with
`shlex.quote`, so no file name or option reaches a shell unquoted.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeconv.artifacts.formats import sidecar_paths
from edgeconv.common.errors import EdgeconvError, MissingDependencyError

_HOST = re.compile(r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?(?P<addr>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])$")
_REMOTE_TMP = re.compile(r"^/[A-Za-z0-9._/-]+$")


@dataclass
class SshTarget:
    host: str  # USER@ADDR as given
    port: int = 22
    identity: Path | None = None  # private key (-i)
    known_hosts: Path | None = None  # host keys to trust (UserKnownHostsFile); default: the user's own
    connect_timeout: int = 10
    remote_edgeconv: str = "edgeconv"  # the edgeconv executable on the remote machine
    options: list[str] = field(default_factory=list)


def parse_host(host: str) -> tuple[str | None, str]:
    """Split USER@ADDR; refuse anything ssh could read as an option or a shell could expand."""
    m = _HOST.match(host or "")
    if not m:
        raise EdgeconvError(f"--host {host!r}: expected USER@ADDR (letters, digits, '.', '-', '_'; IPv6 in square brackets)")
    return m.group("user"), m.group("addr")


def safe_name(i: int, path: Path) -> str:
    """A remote file name made only of [A-Za-z0-9._-] that keeps the suffixes the bench reads (.int8.onnx)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip(".-") or "model"
    return f"{i}_{stem}"


class Remote:
    """One SSH connection (multiplexed through a control socket) to run commands and copy files."""

    def __init__(self, target: SshTarget):
        for exe in ("ssh", "scp"):
            if shutil.which(exe) is None:
                raise MissingDependencyError(exe, "install the OpenSSH client (apt-get install -y openssh-client)")
        self.t = target
        parse_host(target.host)
        self._ctl_dir = tempfile.TemporaryDirectory(prefix="edgeconv-ssh-")
        self._opts = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"ConnectTimeout={int(target.connect_timeout)}",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self._ctl_dir.name}/cm-%C",
            "-o",
            "ControlPersist=60",
            "-o",
            "LogLevel=ERROR",
        ]
        if target.identity is not None:
            self._opts += ["-i", str(target.identity), "-o", "IdentitiesOnly=yes"]
        if target.known_hosts is not None:
            # ssh splits option values on whitespace unless they are quoted
            kh = str(Path(target.known_hosts).resolve())
            if '"' in kh:
                raise EdgeconvError(f"--known-hosts {kh}: a path with a double quote cannot be passed to ssh")
            self._opts += ["-o", f'UserKnownHostsFile="{kh}"']
        for o in target.options:
            self._opts += ["-o", o]

    def _fail(self, what: str, r: subprocess.CompletedProcess) -> EdgeconvError:
        lines = [ln.strip() for ln in (r.stderr or "").splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit code {r.returncode}"
        if r.returncode == 255 or "Host key verification failed" in (r.stderr or ""):
            hint = ""
            if "Host key verification failed" in (r.stderr or "") or "host key" in msg.lower():
                hint = " (the host key is not in known_hosts: verify it, then add it with ssh-keyscan)"
            return EdgeconvError(f"cannot reach {self.t.host} port {self.t.port}: {msg}{hint}")
        return EdgeconvError(f"{what} on {self.t.host} failed: {msg}")

    def ssh(self, remote_cmd: str, timeout: float | None = None, what: str = "command") -> str:
        args = ["ssh", *self._opts, "-p", str(self.t.port), "--", self.t.host, remote_cmd]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EdgeconvError(f"{what} on {self.t.host} did not finish within {timeout:.0f} s")
        if r.returncode != 0:
            raise self._fail(what, r)
        return r.stdout

    def scp(self, src: str, dst: str, timeout: float | None = 600) -> None:
        args = ["scp", "-q", *self._opts, "-P", str(self.t.port), "--", src, dst]
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EdgeconvError(f"copying {src} -> {dst} did not finish within {timeout:.0f} s")
        if r.returncode != 0:
            raise self._fail(f"copying {src}", r)

    def close(self) -> None:
        subprocess.run(
            ["ssh", *self._opts, "-p", str(self.t.port), "-O", "exit", "--", self.t.host],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
        self._ctl_dir.cleanup()

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_remote_bench(
    target: SshTarget, models: list[Path], bench_args: list[str], reference: Path | None = None, timeout: float = 3600
) -> dict:
    """Copy `models` (and their sidecar .json files) to a fresh remote temp dir, run
    `REMOTE_EDGECONV bench FILES --json result.json BENCH_ARGS` there, and return the parsed result with the
    original file names restored."""
    files = [Path(m) for m in models]
    for f in files:
        if not f.is_file():
            raise EdgeconvError(f"no such file: {f}")
    if reference is not None and not reference.is_file():
        raise EdgeconvError(f"--reference: no such file: {reference}")
    with Remote(target) as rem:
        tmp = rem.ssh("mktemp -d -t edgeconv-bench.XXXXXX", timeout=60, what="creating a remote work dir").strip()
        if not _REMOTE_TMP.match(tmp):
            raise EdgeconvError(f"{target.host}: unexpected remote temp dir {tmp!r}")
        try:
            names: dict[str, Path] = {}
            sources = files + ([reference] if reference is not None and reference not in files else [])
            remote_paths = []
            for i, f in enumerate(sources):
                name = safe_name(i, f)
                # an absolute local path: scp reads "a:b" as HOST:PATH, never "/x/a:b"
                rem.scp(str(f.resolve()), f"{target.host}:{tmp}/{name}")
                # sidecar descriptions travel with their artifact, renamed the same way
                for side, remote_side in zip(sidecar_paths(f), (p.name for p in sidecar_paths(name))):
                    if side.is_file() and side != f:
                        rem.scp(str(side.resolve()), f"{target.host}:{tmp}/{remote_side}")
                names[name] = f
                remote_paths.append(f"{tmp}/{name}")
            cmd = [target.remote_edgeconv, "bench", *remote_paths[: len(files)], "--json", f"{tmp}/result.json"]
            if reference is not None:
                cmd += ["--reference", remote_paths[sources.index(reference)]]
            cmd += bench_args
            remote_cmd = f"cd {shlex.quote(tmp)} && {shlex.join(cmd)}"
            try:
                rem.ssh(remote_cmd, timeout=timeout, what="edgeconv bench")
            except EdgeconvError as e:
                if "command not found" in str(e) or "No such file" in str(e):
                    raise EdgeconvError(f"{e} (is edgeconv installed there? pass --remote-edgeconv PATH)")
                raise
            with tempfile.TemporaryDirectory(prefix="edgeconv-remote-") as local:
                rem.scp(f"{target.host}:{tmp}/result.json", str(Path(local, "result.json").resolve()))
                result = json.loads(Path(local, "result.json").read_text())
        finally:
            try:
                rem.ssh(f"rm -rf -- {shlex.quote(tmp)}", timeout=60, what="cleaning up")
            except EdgeconvError:
                pass
    for row in result.get("rows", []):
        src = names.get(Path(str(row.get("path", ""))).name)
        if src is not None:
            row["model"], row["path"] = src.name, str(src)
    ref = result.get("reference") or {}
    if ref.get("path") and Path(ref["path"]).name in names:
        ref["path"] = str(names[Path(ref["path"]).name])
    result["remote"] = {"host": target.host, "port": target.port, "edgeconv": target.remote_edgeconv}
    return result
