"""ingest stage: find the dataset in data/raw (or ingest.source) → canonical data/interim/fer.npz + report.

An empty raw folder → a synthetic demo set (ingest.synthetic.{n,seed}) with a loud warning.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, cast

from ferops.config import load_params, number, section
from ferops.data.io import save_npz, write_json
from ferops.errors import BadRowsError, ConfigError, DataError
from ferops.runner import run

log = logging.getLogger("ferops.ingest")
SYNTHETIC_WARNING = ("SYNTHETIC DEMO DATA — not FER2013; put fer2013.csv in %s/ (or set ingest.source) to train on "
                     "real faces. Generated %d drawn faces (seed %d).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw-dir", default=None,
                    help="folder searched for a dataset (default, or empty: params.yaml ingest.raw_dir, as dvc.yaml passes)")
    ap.add_argument("--out", required=True, type=Path, help="canonical dataset (.npz)")
    ap.add_argument("--report", required=True, type=Path, help="ingest report (JSON)")
    ap.add_argument("--quarantine", required=True, type=Path, help="rejected rows (CSV, header only when none)")
    ap.add_argument("--figures", required=True, type=Path, help="folder for samples.png and class_hist.png")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from ferops.data.formats import (EXPECTED_LAYOUTS, Rejected, check_on_bad_rows, dataset_sha256, detect_source,
                                     linked_folder, read_any, source_sha256, summarize, write_quarantine)
    from ferops.data.dvc_copy import missing_from_dvc_copy
    from ferops.data.synthetic import make_synthetic
    from ferops.plots import class_histogram, sample_grid

    p = section(load_params(args.params), "ingest")
    # MLproject passes '' unless `-P raw_dir=…` is given: its own default (data/raw) overrode ingest.raw_dir unsaid
    args.raw_dir = Path(str(args.raw_dir or p.get("raw_dir") or "data/raw"))
    source = str(p.get("source") or "auto")
    check_on_bad_rows(str(p.get("on_bad_rows", "fail")))  # also when the demo set is generated and nothing is read
    if source != "synthetic" and not Path(source).is_absolute() and (problem := missing_from_dvc_copy(args.raw_dir)):
        raise ConfigError(problem)  # `dvc exp run --temp`: the workspace's git-ignored dataset is not in DVC's copy
    if source == "auto" and not args.raw_dir.exists():  # a typo: else the demo set, as for an empty folder
        raise DataError(f"ingest.raw_dir: {args.raw_dir} not found — fix the path (params.yaml `ingest.raw_dir`, or "
                        "`-P raw_dir=` of `mlflow run`); an empty folder there means the synthetic demo set.")
    is_path = source not in ("auto", "synthetic")
    if is_path and not Path(source).is_absolute() and (args.raw_dir / source).exists():
        source = str(args.raw_dir / source)  # `source: fer2013.csv`, a name inside raw_dir, as params.yaml says
    if is_path and not Path(source).exists():
        raise DataError(f"ingest.source: {source} not found, neither inside {args.raw_dir}/ nor as a path — fix it in "
                        "params.yaml or set it to `auto`.")
    if is_path and not Path(os.path.abspath(source)).is_relative_to(os.path.abspath(args.raw_dir)):
        # dvc.yaml can only watch the raw folder (`auto`/`synthetic` are not paths): data read from elsewhere would
        # go stale unnoticed — a later edit of it would not re-run ingest, nor anything trained on it.
        fix = (f"set `ingest.raw_dir: {os.path.abspath(source)}` (DVC then watches that folder)" if Path(source).is_dir()
               else f"link it in (`ln -s {os.path.abspath(source)} {args.raw_dir}/`; DVC follows links to files) and "
                    "keep `source: auto`, or set `ingest.raw_dir` to its folder")
        raise ConfigError(f"ingest.source: {source} is outside {args.raw_dir}/, the folder DVC watches for ingest, so "
                          f"a change to it would not re-run the pipeline. Instead, {fix}.")
    found = None if source == "synthetic" else detect_source(args.raw_dir if source == "auto" else Path(source))
    link = linked_folder(found[1], args.raw_dir) if found is not None else None
    if link is not None:
        raise ConfigError(f"{link} links to a folder ({os.path.realpath(link)}): DVC does not look inside linked "
                          "folders, so a change there would not re-run ingest. Set `ingest.raw_dir: "
                          f"{os.path.realpath(link)}` in params.yaml instead (DVC then watches that folder).")
    if found is None and is_path:
        raise DataError(f"ingest.source: {source} holds no dataset (expected {EXPECTED_LAYOUTS}).")
    rejected: list[Rejected]
    info: dict[str, Any]
    if found is None:
        syn = p.get("synthetic") or {}
        n, seed = number(syn, "ingest.synthetic", "n", 3500, whole=True, low=1), number(syn, "ingest.synthetic", "seed", 42, whole=True)
        log.warning("!" * 100)
        log.warning(SYNTHETIC_WARNING, args.raw_dir, n, seed)
        log.warning("!" * 100)
        data, rejected = make_synthetic(n, seed), []
        info = {"synthetic": True, "source": f"synthetic(n={n}, seed={seed})", "format": "synthetic",
                "sha256": dataset_sha256(data)}
    else:
        fmt, path = found
        log.info("reading %s (format %s, on_bad_rows=%s)", path, fmt, p.get("on_bad_rows", "fail"))
        try:
            data, rejected = read_any(path, str(p.get("on_bad_rows", "fail")), fmt=fmt)
        except BadRowsError as e:  # the message shows five; the file keeps every one, untouched
            write_quarantine(e.rejected, args.quarantine)
            n = len(e.rejected)
            raise DataError(f"{e} {'It is' if n == 1 else f'All {n} are'} listed, untouched, in {args.quarantine}.") from None
        info = {"synthetic": False, "source": str(path), "format": fmt, "sha256": source_sha256(fmt, path)}
    write_quarantine(rejected, args.quarantine)  # first: the error below points the user at it
    if len(data) == 0:
        raise DataError(f"{info['source']}: every row was rejected — see {args.quarantine} for the reasons.")

    save_npz(data, args.out)
    summary = summarize(data)
    write_json({**info, **summary, "rows_in": len(data) + len(rejected), "quarantined": len(rejected),
                "on_bad_rows": p.get("on_bad_rows", "fail")}, args.report)
    title = "SYNTHETIC demo faces" if info["synthetic"] else f"{Path(info['source']).name} ({info['format']})"
    sample_grid(data.pixels, data.emotion, args.figures / "samples.png", title=title)
    per_usage_class = cast("dict[str, dict[str, int]]", summary["per_usage_class"])  # summarize: usage → class → n
    class_histogram(per_usage_class, args.figures / "class_hist.png", title=f"Images per class — {title}")
    log.info("ingested %d rows (%d labeled, %d quarantined) from %s → %s", len(data), summary["labeled"],
             len(rejected), info["source"], args.out)


if __name__ == "__main__":
    run(main)
