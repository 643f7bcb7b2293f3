"""Turn a profile of params overrides into `dvc exp run -S key=value` arguments.

Usage: dvc exp run $(python -m ferops.profiles profiles/gpu.yaml)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import yaml

from ferops.config import flatten


def set_args(profile: dict, params: dict) -> list[str]:
    """`-S key=value` pairs for every leaf of the profile; keys new to params get Hydra's `+` prefix."""
    existing = flatten(params)
    args: list[str] = []
    for key, value in flatten(profile).items():
        text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
        args += ["-S", f"{'' if key in existing else '+'}{key}={text}"]
    return args


def main(argv: list[str]) -> None:
    """Print the arguments for profile file argv[0] against params file argv[1] (default params.yaml)."""
    if not argv:
        sys.exit("usage: python -m ferops.profiles PROFILE.yaml")
    profile = yaml.safe_load(Path(argv[0]).read_text()) or {}
    params = yaml.safe_load(Path(argv[1] if len(argv) > 1 else "params.yaml").read_text()) or {}
    print(" ".join(shlex.quote(a) for a in set_args(profile, params)))


if __name__ == "__main__":
    main(sys.argv[1:])
