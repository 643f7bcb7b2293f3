"""How a tuned or sampled hyperparameter maps onto a model's training config (`tune` samples, `train_deep` applies
the best). A module of its own so that both stages depend on this mapping and not on each other's code: DVC re-runs
a stage whenever a module it lists changes, and the ResNet's stage takes an hour.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from ferops.errors import ConfigError

AUG_STRENGTH_KEYS = ("rotate_deg", "translate", "zoom", "contrast", "erasing")
# The most each online_aug magnitude can be: Keras' RandomContrast/Translation/Zoom refuse a factor above 1 (a raw
# ValueError mid-study when aug_strength scaled, say, contrast 0.8 by 1.5), erasing is a probability, and a turn
# beyond 180° is one within it. aug_strength caps at these; a larger value in params.yaml is a ConfigError (zoo).
AUG_LIMITS = {"rotate_deg": 180.0, "translate": 1.0, "zoom": 1.0, "contrast": 1.0, "erasing": 1.0}
DIRECT_KEYS = ("lr", "weight_decay", "dropout", "label_smoothing", "batch_size")


def _doubling(base: int, n: int) -> list[int]:
    return [int(base) * 2 ** i for i in range(n)]


def _resize(seq: list[Any], n: int, grow: Callable[[Any], Any]) -> list[Any]:
    """`seq` cut or extended to n entries (new entries derived from the last one)."""
    out = list(seq[:n])
    while len(out) < n:
        out.append(grow(out[-1]))
    return out


def apply_params(cfg: dict[str, Any], sampled: dict[str, Any]) -> dict[str, Any]:
    """A copy of a training config with sampled values applied (direct keys, `depth`, `base_width`, `aug_strength`, dotted keys)."""
    out = copy.deepcopy(cfg)
    arch = out.get("arch")
    rest = dict(sampled)
    if "depth" in rest:  # before base_width: depth changes how many widths there are
        d = int(rest.pop("depth"))
        if d < 1:
            raise ConfigError(f"depth={d}: must be at least 1.")
        if arch == "resnet":  # blocks per stage
            out["stages"] = [d] * len(out.get("stages", [2, 2, 2, 2]))
        elif arch == "cnn":  # conv/pool blocks
            out["filters"] = _resize(list(out.get("filters", [32, 64])), d, lambda f: 2 * f)
        elif arch == "vgg":  # convs per block
            out["blocks"] = [[blk[0]] * d for blk in out.get("blocks", [[32, 32], [64, 64], [128, 128]])]
        elif arch == "dnn":  # hidden layers
            out["hidden"] = _resize(list(out.get("hidden", [500, 300, 100])), d, lambda h: max(8, h // 2))
        elif arch == "mini_xception":  # residual modules
            out["module_widths"] = _resize(list(out.get("module_widths", [16, 32, 64, 128])), d, lambda w: 2 * w)
        else:
            raise ConfigError(f"depth: not defined for arch={arch!r}.")
    if "base_width" in rest:
        w = int(rest.pop("base_width"))
        out.pop("base_width", None)  # the zoo would prefer it over the widths set here
        if arch == "resnet":
            out["widths"] = _doubling(w, len(out.get("stages", [2, 2, 2, 2])))
        elif arch == "cnn":
            out["filters"] = _doubling(w, len(out.get("filters", [32, 64])))
        elif arch == "vgg":
            out["blocks"] = [[w * 2 ** i] * len(blk) for i, blk in enumerate(out.get("blocks", [[32, 32], [64, 64], [128, 128]]))]
        elif arch == "mini_xception":
            out["module_widths"] = _doubling(w, len(out.get("module_widths", [16, 32, 64, 128])))
        elif arch == "dnn":  # first layer = w, the others keep their ratio to it
            hidden = list(out.get("hidden", [500, 300, 100]))
            out["hidden"] = [max(8, round(h * w / hidden[0])) for h in hidden]
        else:
            raise ConfigError(f"base_width: not defined for arch={arch!r}.")
    if "aug_strength" in rest:
        k = float(rest.pop("aug_strength"))
        out.pop("aug_strength", None)  # the zoo would scale the magnitudes set here by the config's own value again
        aug = dict(out.get("online_aug") or {})
        for key in AUG_STRENGTH_KEYS:
            if key in aug and not isinstance(aug[key], bool):
                aug[key] = min(AUG_LIMITS[key], float(aug[key] or 0.0) * k)
        out["online_aug"] = aug
    for name, value in rest.items():
        if "." in name:  # e.g. online_aug.erasing
            node = out
            *parents, leaf = name.split(".")
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"tune space `{name}`: `{p}` is not a mapping in the training config.")
            node[leaf] = value
        elif name in DIRECT_KEYS or name in out:
            out[name] = value
        else:
            raise ConfigError(f"tune space `{name}`: not a training config key; use one of "
                              f"{', '.join(DIRECT_KEYS)}, depth, base_width, aug_strength, or an existing key of the config.")
    return out


def tuned_params(tuning_dir: str | Path, model: str, arch: str) -> tuple[dict[str, Any], Path | None]:
    """`best_params` of <tuning_dir>/<model>.json (else <arch>.json) and the file used; ({}, None) if none."""
    for key in dict.fromkeys((model, arch)):
        f = Path(tuning_dir) / f"{key}.json"
        if f.exists():
            return dict(json.loads(f.read_text()).get("best_params") or {}), f
    return {}, None
