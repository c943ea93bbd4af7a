"""Atomic writes, content hashes and provenance records: how every artifact reaches the disk.

A write goes to a temporary file beside its destination and is renamed onto it only when complete, so an
interrupted run leaves the previous file (or nothing), never half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Iterator

from edgeconv import __version__
from edgeconv.common.errors import EdgeconvError


# ----------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block finishes.

    The temp file lives in the destination directory so the final `os.replace` is atomic on the same filesystem;
    an interrupted run leaves the previous file (or nothing), never half a file.
    """
    dest = Path(path)
    if dest.is_dir():
        raise EdgeconvError(f"{dest} is a directory, expected a file path to write")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{_tmp_stem(dest)}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise EdgeconvError(f"cannot write {dest}: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); the artifact gets the mode any new file gets here (umask)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _tmp_stem(dest: Path) -> str:
    """The part of a temp file's name taken from `dest` (short enough that the temp name fits in 255 bytes)."""
    return dest.name[:120]


def _remove_orphans(dest: Path) -> None:
    """Temp files of `dest` left by a writer that was killed (its pid, in the name, no longer runs)."""
    stem = _tmp_stem(dest)
    for tmp in dest.parent.glob(f".{glob_escape(stem)}.*.tmp"):
        pid = tmp.name[len(stem) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------- hashing
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_hash(digest: str) -> str:
    return digest[:12]


def provenance(command: str, parent: str | os.PathLike | None = None, parent_info: dict | None = None) -> dict:
    """A provenance record: what made this artifact, from which parent, with which edgeconv."""
    rec: dict[str, Any] = {"command": command, "edgeconv_version": __version__, "parent_sha256": None, "chain": []}
    if parent is not None and Path(parent).exists():
        rec["parent_sha256"] = file_sha256(parent)
        rec["parent_path"] = str(parent)
    if parent_info:
        prev = parent_info.get("provenance", {})
        rec["chain"] = list(prev.get("chain", [])) + [
            {"command": prev.get("command"), "parent_sha256": prev.get("parent_sha256")}
        ]
    return rec


def python_command() -> str:
    return " ".join(["edgeconv", *sys.argv[1:]]) if sys.argv else "edgeconv"
