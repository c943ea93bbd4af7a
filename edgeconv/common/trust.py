"""Which users' modules (`package.module:factory`) this process may import: only those the user named, on the
command line (`--trust-module`, or the model name itself) or in EDGECONV_TRUST_MODULES; never one a file names.

Torch-free, so the command line records trust before any heavy import.
"""

from __future__ import annotations

import os
import re

from edgeconv.common.errors import EdgeconvError

FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
TRUST_ENV = "EDGECONV_TRUST_MODULES"
_TRUSTED: set[str] = set()


def is_factory_name(name: str) -> bool:
    return bool(FACTORY_RE.match(name))


def trust(name: str) -> None:
    """Allow `name` to be imported in this process (the user named it)."""
    if not is_factory_name(name):
        raise EdgeconvError(f"{name!r} is not a factory name; expected package.module:function")
    _TRUSTED.add(name)


def is_trusted(name: str) -> bool:
    env = {s.strip() for s in os.environ.get(TRUST_ENV, "").split(",") if s.strip()}
    return name in _TRUSTED or name in env
