"""Artifact I/O: atomic writes and hashes (`io`), checkpoints (`checkpoint`), model cards and ONNX metadata (`card`),
the formats table (`formats`), ONNX graph walking (`graphwalk`) and the `info` registry (`describe`).

Torch-free except `checkpoint`; nothing here imports a pipeline stage. The names most callers need are re-exported;
the checkpoint ones on first use, so importing `edgeconv.artifacts.formats` (the command line's checks) never
imports torch.
"""

from edgeconv.artifacts.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    provenance,
    python_command,
    short_hash,
)

_CHECKPOINT_NAMES = ("CONFIG_BOUNDS", "FORMAT", "config_problem", "first_line", "read_checkpoint", "safe_torch_load",
                     "save_checkpoint")  # fmt: skip


def __getattr__(name: str):
    if name in _CHECKPOINT_NAMES:
        from edgeconv.artifacts import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'edgeconv.artifacts' has no attribute {name!r}")


__all__ = [
    "CONFIG_BOUNDS",
    "FORMAT",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "config_problem",
    "file_sha256",
    "first_line",
    "provenance",
    "python_command",
    "read_checkpoint",
    "safe_torch_load",
    "save_checkpoint",
    "short_hash",
]
