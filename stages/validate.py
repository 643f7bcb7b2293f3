"""validate stage: Great Expectations suite on the ingested dataset → reports/validation.json + Data Docs."""

from __future__ import annotations

import argparse
import logging

from ferops.config import load_params, number, section
from ferops.data.io import load_npz, write_json
from ferops.runner import run

log = logging.getLogger("ferops.validate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="canonical dataset (.npz) from ingest")
    ap.add_argument("--report", required=True, help="validation report (JSON)")
    ap.add_argument("--docs", required=True, help="folder for the GX Data Docs site")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from ferops.data.validation import DEFAULTS, describe_failures, raise_on_critical, validate_dataset

    p = section(load_params(args.params), "validate")
    # a mistyped threshold (`min_class_fraction: lots`) fails here, naming its key, not as a traceback inside GX
    params = {key: number(p, "validate", key, default, low=0, high=1) for key, default in DEFAULTS.items()}
    data = load_npz(args.data)
    log.info("validating %d rows of %s", len(data), args.data)
    report = validate_dataset(data, params, docs_dir=args.docs)
    write_json(report, args.report)  # written before failing, so the failures can be read
    if report["warnings"]:
        log.warning(describe_failures(report, args.data, "warnings"))
    d = report["duplicates"]
    log.info("%d/%d expectations passed; duplicates: %d groups (%d rows, %d across usages, %d conflicting labels); "
             "blanks: %d; Data Docs: %s", report["expectations"]["passed"], report["expectations"]["evaluated"],
             d["groups"], d["rows_in_groups"], d["cross_usage_groups"], d["conflicting_label_groups"],
             report["blanks"]["count"], report["data_docs"])
    raise_on_critical(report, args.data)


if __name__ == "__main__":
    run(main)
