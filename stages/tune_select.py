"""tune_select stage: the tuned params one deep model trains with → reports/tuned/<model>.json.

A stage of its own so that train_deep@<model> depends on this one small file, not on every study under
reports/tuning: re-tuning one family, or any study with `use_tuned: false`, leaves the other models' training (the
ResNet's hour included) cached, because this file comes out byte-identical.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ferops.config import load_params, section
from ferops.errors import ConfigError
from ferops.runner import run

log = logging.getLogger("ferops.tune_select")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="key under train_deep.models in params.yaml")
    ap.add_argument("--tuning", type=Path, required=True, help="folder of tune stage results (<family>.json)")
    ap.add_argument("--out", type=Path, required=True, help="the selection (JSON) train_deep reads")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from ferops.data.io import write_json
    from ferops.hparams import tuned_params

    td = section(load_params(args.params), "train_deep")
    models = td.get("models") or {}
    if args.model not in models:
        raise ConfigError(f"--model {args.model}: not in params.yaml train_deep.models ({', '.join(models)}).")
    use = bool(td.get("use_tuned"))
    arch = str((models[args.model] or {}).get("arch") or (td.get("common") or {}).get("arch"))
    best, source = tuned_params(args.tuning, args.model, arch) if use else ({}, None)
    if use and source is not None and not best:  # a study with no complete trial (e.g. its timeout came first)
        log.warning("use_tuned is true but %s has no best params (no complete trial) — %s trains with params.yaml "
                    "values", source, args.model)
        source = None  # else train_deep's `tuned_from` tag would name a study whose params it never used
    elif use and source is None:
        names = " nor ".join(f"{k}.json" for k in dict.fromkeys((args.model, arch)))
        log.warning("use_tuned is true but %s has no %s — %s trains with params.yaml values", args.tuning, names,
                    args.model)
    # only what training reads: flipping use_tuned for a model without a study leaves this file, and its training, as is
    write_json({"model": args.model, "source": None if source is None else str(source), "best_params": best}, args.out)
    log.info("%s: %s", args.model, f"tuned params from {source}: {best}" if source else "params.yaml values")


if __name__ == "__main__":
    run(main)
