"""`package.module:factory`: a user's own `nn.Module`, built by a function of theirs.

The factory is called with whichever of `num_classes`, `in_chans` and `img_size` it accepts and must return an
`nn.Module` mapping [N, C, H, W] images to [N, classes] logits. Its weights live in `.net`, as a timm model's do.

Code is imported only when the user names it: `--model package.module:factory` on the command line (or
`create_model` in Python) names it for that process. A checkpoint records the factory's name, but loading one
never imports what a file says: the name must also be given with `edgeconv --trust-module package.module:factory`
or in `EDGECONV_TRUST_MODULES` (comma-separated), else loading stops with that instruction. The current folder is
on the import path, as for `python -m`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys

import torch.nn as nn

from edgeconv.common.errors import EdgeconvError
from edgeconv.common.trust import TRUST_ENV, is_factory_name, is_trusted, trust  # noqa: F401 - re-exported
from edgeconv.models.registry import register_family


def _factory(name: str):
    if not is_factory_name(name):
        raise EdgeconvError(f"recorded factory {name!r} is not a package.module:function name")
    if not is_trusted(name):
        raise EdgeconvError(
            f"built by user code {name}, which edgeconv imports only when you name it: "
            f"edgeconv --trust-module {name} ... (or {TRUST_ENV}={name})"
        )
    mod_name, fn_name = name.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise EdgeconvError(f"cannot import {mod_name} for {name} ({e}); run from the folder that holds it") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing (SyntaxError, ...): theirs
        raise EdgeconvError(f"importing {mod_name} for {name} failed: {type(e).__name__}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise EdgeconvError(f"{mod_name} has no function {fn_name!r}")
    return fn


class UserModule(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        fn = _factory(cfg["factory"])
        offered = {"num_classes": cfg["num_classes"], "in_chans": cfg["in_chans"], "img_size": cfg["img_size"]}
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if takes_any or k in params}
        try:
            net = fn(**kwargs)
        except Exception as e:  # noqa: BLE001 - the user's code: any failure is reported as theirs, in one line
            raise EdgeconvError(f"{cfg['factory']}({', '.join(kwargs)}) failed: {type(e).__name__}: {e}") from None
        if not isinstance(net, nn.Module):
            raise EdgeconvError(f"{cfg['factory']} returned {type(net).__name__}, expected an nn.Module")
        self.net = net
        self.cfg = cfg

    def forward(self, x):
        return self.net(x)


@register_family("module", variants={}, description="a user's nn.Module (package.module:factory)")
def build(cfg: dict) -> nn.Module:
    return UserModule(cfg)
