"""Turn a profile of params overrides into `dvc exp run -S key=value` arguments.

Usage: make exp PROFILE=profiles/gpu.yaml (runs `dvc exp run` with these arguments, then restores params.yaml)

The shell splits an unquoted `$(...)` on whitespace and does not honour quotes inside it, so every argument is
printed as one word: lists and mappings as compact JSON (which Hydra's override grammar reads), no shell quoting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from ferops.config import MODEL_KEYS, did_you_mean, flatten
from ferops.errors import ConfigError
from ferops.runner import run


def set_args(profile: dict, params: dict) -> list[str]:
    """`-S key=value` pairs for every leaf of the profile; keys new to params get Hydra's `+` prefix. Each
    value is one shell word; ConfigError for a text value with whitespace (it cannot survive `$(...)`)."""
    if not isinstance(profile, dict):
        raise ConfigError(f"the profile is a {type(profile).__name__}, not a mapping of params sections "
                          "(e.g. train_deep: {common: {epochs: 60}}).")
    existing = _paths(params)
    if not flatten(profile):  # `make exp` would run the default pipeline and call it the profile's
        raise ConfigError("the profile holds no overrides — nothing to run as an experiment.")
    args: list[str] = []
    for key, value in flatten(profile).items():
        top = key.split(".", 1)[0]
        if top not in params:  # a new key may extend a section, never invent one: that is a typo
            raise ConfigError(f"profile key {key}: params.yaml has no `{top}:` section{did_you_mean(top, params, '.')}")
        model_key = _model_key(key)
        if model_key is not None and model_key not in MODEL_KEYS:  # DVC takes it with `+`; training would ignore it
            raise ConfigError(f"profile key {key}: `{model_key}` is not a model setting"
                              f"{did_you_mean(model_key, MODEL_KEYS, '.')}")
        if isinstance(value, (list, dict, bool)) or value is None:
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = str(value)
        if any(c.isspace() for c in text):
            raise ConfigError(f"profile key {key}: the value {text!r} holds whitespace, which `dvc exp run $(...)` "
                              f"would split; use a value without spaces.")
        args += ["-S", f"{'' if key in existing else '+'}{key}={text}"]
    return args


def _paths(params: dict, prefix: str = "") -> set[str]:
    """Every dotted path params.yaml holds, mappings included: a profile value replacing a whole mapping (say
    `online_aug: null`) sets an existing key, and Hydra's `+` (add a new key) on it is refused by DVC."""
    out: set[str] = set()
    for k, v in params.items():
        out.add(f"{prefix}{k}")
        if isinstance(v, dict):
            out |= _paths(v, f"{prefix}{k}.")
    return out


def _model_key(key: str) -> str | None:
    """The model-config key a dotted profile key sets (train_deep.common.<k>…, train_deep.models.<m>.<k>…), else None."""
    parts = key.split(".")
    if parts[:2] == ["train_deep", "common"] and len(parts) > 2:
        return parts[2]
    if parts[:2] == ["train_deep", "models"] and len(parts) > 3:
        return parts[3]
    return None


def _read_yaml(path: str, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p}: no such file (profiles live in profiles/, e.g. profiles/gpu.yaml).")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {p}: not valid YAML ({str(exc).splitlines()[0]}).") from None


def main(argv: list[str]) -> None:
    """Print the arguments for profile file argv[0] against params file argv[1] (default params.yaml)."""
    if not argv:
        sys.exit("usage: python -m ferops.profiles PROFILE.yaml [PARAMS.yaml]")
    profile = _read_yaml(argv[0], "profile")
    params_file = argv[1] if len(argv) > 1 else "params.yaml"
    if not Path(params_file).is_file():  # not the profile's hint: this is the project's own file
        raise ConfigError(f"params file {params_file}: no such file — run from the project root (where params.yaml "
                          "is), or name the params file after the profile.")
    params = _read_yaml(params_file, "params file")
    if not isinstance(params, dict):
        raise ConfigError(f"params file {params_file}: expected a mapping at top level.")
    print(" ".join(set_args(profile, params)))


if __name__ == "__main__":
    run(lambda: main(sys.argv[1:]))
