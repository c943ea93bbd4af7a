"""Model zoo: a registry of hybrid conv + attention families, each one module.

`create_model("routed-tiny", num_classes=10, in_chans=1, img_size=32)` builds a variant; `create_model("timm:NAME")`
wraps a timm model and `create_model("package.module:factory")` a user's own module (`models/user_module.py`);
`create_model_from_config(cfg)` rebuilds exactly what a checkpoint recorded (pruned widths included). A family
registers itself with `@register_family`, so adding one touches one file.
"""

# each family module registers itself on import (the registry imports none of them)
from edgeconv.models import acmix, can, effvit, hvt, resformer, routed, saliency, timm_family, user_module  # noqa: F401
from edgeconv.models.checkpoint import load_model
from edgeconv.models.registry import (
    Family,
    count_params_macs,
    create_model,
    create_model_from_config,
    families,
    list_models,
    parse_name,
    register_family,
    routers,
    set_routing,
)

__all__ = [
    "Family",
    "count_params_macs",
    "create_model",
    "create_model_from_config",
    "families",
    "list_models",
    "load_model",
    "parse_name",
    "register_family",
    "routers",
    "set_routing",
]
