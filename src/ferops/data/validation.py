"""Great Expectations suite for the canonical dataset: critical checks fail the stage, warnings are listed.

The suite runs on a DataFrame *view* of the dataset (one row per image, summary columns), not on raw
pixels: GX stays fast on 36k images and every expectation names a readable column.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from ferops.constants import EMOTIONS, N_PIXELS, NUM_CLASSES, UNLABELED, USAGE_TO_SPLIT
from ferops.data.io import FerData
from ferops.data.split import image_hashes
from ferops.errors import DataError

if TYPE_CHECKING:  # annotations only: GX is imported where it runs (below), not with this module
    from great_expectations.checkpoint import ValidationAction
    from great_expectations.data_context.store.store import DataDocsSiteConfigTypedDict

# Bump when an expectation is added, removed or changed: the suite name (and Data Docs) carry it.
SUITE_VERSION = 1
SUITE_NAME = f"ferops_fer_rows_v{SUITE_VERSION}"

LABELED_USAGES: tuple[str, ...] = tuple(USAGE_TO_SPLIT)  # Training, PublicTest, PrivateTest
# Usages of rows without a competition split: "Unknown" = source had no Usage column (split them with
# the `stratified` strategy); "Test"/"Unlabeled" = prediction rows (e.g. Kaggle test.csv, emotion −1).
OTHER_USAGES: tuple[str, ...] = ("Unknown", "Test", "Unlabeled")
ALLOWED_USAGES: tuple[str, ...] = LABELED_USAGES + OTHER_USAGES
DEFAULTS: dict[str, float] = {"min_class_fraction": 0.01, "max_duplicate_fraction": 0.05, "max_blank_fraction": 0.01}
_CHUNK = 4096  # rows per block when computing pixel statistics (bounds float64 temporaries to ~75 MB)


def dataset_frame(pixels: np.ndarray | Sequence[np.ndarray], emotion: np.ndarray | Sequence[int],
                  usage: np.ndarray | Sequence[str]) -> pd.DataFrame:
    """One row per image: label, usage, pixel count/range/mean/std, nulls, hash, blank/duplicate flags."""
    n = len(pixels)
    emo = pd.array(np.asarray(emotion, dtype=np.int64), dtype="Int64")
    use = pd.array([str(u) for u in usage], dtype="str")
    if isinstance(pixels, np.ndarray) and pixels.dtype != object:
        flat = pixels.reshape(n, -1)
        stats = np.concatenate([_row_stats(flat[i:i + _CHUNK]) for i in range(0, n, _CHUNK)]) if n else np.zeros((0, 6))
        hashes = image_hashes(flat)
    else:  # ragged input (rows of different lengths): only a malformed source gives this
        rows = [np.asarray(p).ravel() for p in pixels]
        stats = np.array([_row_stats(r[None, :])[0] for r in rows]).reshape(n, 6)
        hashes = [image_hashes(r[None, :])[0] for r in rows]
    df = pd.DataFrame({
        "emotion": emo,
        "usage": use,
        "n_pixels": stats[:, 0].astype(np.int64),
        "pixel_min": stats[:, 1],
        "pixel_max": stats[:, 2],
        "pixel_mean": stats[:, 3],
        "pixel_std": stats[:, 4],
        "has_null": stats[:, 5].astype(bool),
        "image_hash": pd.array(hashes, dtype="str"),
    })
    df["is_blank"] = (df["pixel_max"] == df["pixel_min"]).astype(np.int64)
    df["is_duplicate"] = df["image_hash"].duplicated(keep=False).astype(np.int64)
    # Rows a model trains on: Training usage when the source has it, else every labeled row.
    labeled = df["emotion"] != UNLABELED
    train = (df["usage"] == "Training") if (df["usage"] == "Training").any() else labeled
    df["train_emotion"] = df["emotion"].where(train & labeled)
    frac = df["train_emotion"].value_counts(normalize=True)
    df["train_class_fraction"] = df["train_emotion"].map(frac).astype("Float64")
    return df


def _row_stats(block: np.ndarray) -> np.ndarray:
    """[n_pixels, min, max, mean, std, has_null] per row of a 2-D block (NaN-aware)."""
    x = block.astype(np.float64)
    nulls = np.isnan(x).any(axis=1)
    if not nulls.any():
        return np.column_stack([np.full(len(x), x.shape[1]), x.min(1), x.max(1), x.mean(1), x.std(1), nulls])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are reported by the suite, not warned
        return np.column_stack([np.full(len(x), x.shape[1]), np.nanmin(x, 1), np.nanmax(x, 1), np.nanmean(x, 1),
                                np.nanstd(x, 1), nulls])


def frame_from_ferdata(data: FerData) -> pd.DataFrame:
    """dataset_frame() of a canonical dataset."""
    return dataset_frame(data.pixels, data.emotion, data.usage)


def build_expectations(params: dict[str, Any] | None = None) -> list[Any]:
    """The suite's expectations: critical ones (default severity) and warning-level ones from params."""
    import great_expectations.expectations as gxe

    p = {**DEFAULTS, **(params or {})}
    labels = list(range(NUM_CLASSES))
    pairs = [(u, e) for u in LABELED_USAGES for e in labels] + [(u, e) for u in OTHER_USAGES for e in [UNLABELED, *labels]]

    def crit(why: str, fix: str) -> dict[str, Any]:
        return {"severity": "critical", "why": why, "fix": fix}

    def warn(why: str, fix: str) -> dict[str, Any]:
        return {"severity": "warning", "why": why, "fix": fix}

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="emotion",
                                          meta=crit("every row needs a label or -1", "re-run ingest; fix the source rows")),
        gxe.ExpectColumnValuesToNotBeNull(column="usage", meta=crit("usage drives the split", "re-run ingest")),
        gxe.ExpectColumnValuesToBeInSet(column="emotion", value_set=[UNLABELED, *labels],
                                        meta=crit("labels are 0..6 (Angry..Neutral), -1 = unlabeled",
                                                  "correct or drop the rows with other labels in the source")),
        gxe.ExpectColumnValuesToBeInSet(column="usage", value_set=list(ALLOWED_USAGES),
                                        meta=crit(f"usage must be one of {', '.join(ALLOWED_USAGES)}",
                                                  "rename the usage values in the source (Training/PublicTest/PrivateTest)")),
        gxe.ExpectColumnPairValuesToBeInSet(column_A="usage", column_B="emotion", value_pairs_set=pairs,
                                            meta=crit("labels 0..6 for Training/PublicTest/PrivateTest rows; -1 (unlabeled) "
                                                      "only for Unknown/Test/Unlabeled rows",
                                                      "label those rows, or mark them as Test usage for prediction")),
        gxe.ExpectColumnValuesToBeInSet(column="n_pixels", value_set=[N_PIXELS],
                                        meta=crit("48x48 images have 2304 pixels", "fix the pixel strings in the source")),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0, max_value=255,
                                          meta=crit("grey levels are 0..255", "rescale the source images to 0..255")),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0, max_value=255,
                                          meta=crit("grey levels are 0..255", "rescale the source images to 0..255")),
        gxe.ExpectColumnValuesToBeInSet(column="has_null", value_set=[False],
                                        meta=crit("images must not contain missing pixels", "fix or drop those rows")),
        gxe.ExpectColumnDistinctValuesToContainSet(column="train_emotion", value_set=labels,
                                                   meta=crit("every class must appear in the training rows",
                                                             "add examples of the missing class to the Training rows")),
        gxe.ExpectColumnMinToBeBetween(column="train_class_fraction", min_value=float(p["min_class_fraction"]),
                                       severity="warning",  # type: ignore[arg-type]  # pydantic makes it a FailureSeverity
                                       meta=warn("a very rare class is hard to learn",
                                                 "consider train_deep.common.class_weights, or augment.balance with "
                                                 "train_deep.train_data set to the augment stage's set")),
        gxe.ExpectColumnMeanToBeBetween(column="is_duplicate", min_value=0.0, max_value=float(p["max_duplicate_fraction"]),
                                        severity="warning",  # type: ignore[arg-type]  # pydantic makes it a FailureSeverity
                                        meta=warn("share of rows whose exact image occurs more than once",
                                                  "see reports/split.json; split.duplicates: drop removes val/test copies")),
        gxe.ExpectColumnMeanToBeBetween(column="is_blank", min_value=0.0, max_value=float(p["max_blank_fraction"]),
                                        severity="warning",  # type: ignore[arg-type]  # pydantic makes it a FailureSeverity
                                        meta=warn("share of constant (blank) images",
                                                  "set split.drop_blank: true, or drop the blank rows from the source")),
    ]


def build_suite(params: dict[str, Any] | None = None) -> Any:
    """An ExpectationSuite named SUITE_NAME holding build_expectations(params)."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=SUITE_NAME, meta={"version": SUITE_VERSION, "owner": "ferops validate"})
    for exp in build_expectations(params):
        suite.add_expectation(exp)
    return suite


def run_suite(frame: pd.DataFrame, params: dict[str, Any] | None, docs_dir: str | Path | None,
              context_dir: str | Path | None = None) -> Any:
    """Validate `frame` with a GX file context (temp dir unless given) via a Checkpoint; Data Docs go to docs_dir."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # offline machines: no telemetry attempts
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with tempfile.TemporaryDirectory(prefix="ferops-gx-") as tmp:
        ctx = gx.get_context(mode="file", project_root_dir=str(context_dir or tmp))
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        actions: list[ValidationAction] = []
        if docs_dir is not None:
            site: DataDocsSiteConfigTypedDict = {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(Path(docs_dir).resolve())},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}
            for name in list(ctx.list_data_docs_sites()):  # only our site: the default one lives inside the context
                ctx.delete_data_docs_site(name)
            ctx.add_data_docs_site("ferops", site)
            actions.append(UpdateDataDocsAction(name="update_data_docs", site_names=["ferops"]))
        ds = ctx.data_sources.add_or_update_pandas("ferops")
        asset = next((a for a in ds.assets if a.name == "fer_rows"), None) or ds.add_dataframe_asset("fer_rows")
        batch = next((b for b in asset.batch_definitions if b.name == "whole"), None) \
            or asset.add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add_or_update(build_suite(params))
        vd = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{SUITE_NAME}_rows", data=batch, suite=suite))
        cp = ctx.checkpoints.add_or_update(gx.Checkpoint(
            name=f"{SUITE_NAME}_checkpoint", validation_definitions=[vd], actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 10}))
        result = cp.run(batch_parameters={"dataframe": frame})
        return next(iter(result.run_results.values()))


def _failure(r: Any) -> dict[str, Any]:
    """A failed expectation as plain JSON: type, column(s), severity, observed value/counts, why and fix."""
    cfg = r.expectation_config
    kw, res, meta = dict(cfg.kwargs), dict(r.result or {}), dict(cfg.meta or {})
    out: dict[str, Any] = {
        "expectation": cfg.type,
        "column": kw.get("column") or [kw.get("column_A"), kw.get("column_B")],
        "severity": str(getattr(cfg.severity, "value", cfg.severity)),
        "why": meta.get("why", ""),
        "fix": meta.get("fix", ""),
    }
    if "observed_value" in res:
        out["observed"] = _plain(res["observed_value"])
    for key in ("unexpected_count", "unexpected_percent", "partial_unexpected_counts", "partial_unexpected_index_list",
                "missing_count", "partial_missing_list"):
        if key in res:
            out[key] = _plain(res[key])
    if out.get("column") == "train_emotion" and "partial_missing_list" in out:  # name the missing classes
        out["missing_classes"] = [EMOTIONS[int(c)] for c in out["partial_missing_list"] if 0 <= int(c) < NUM_CLASSES]
    if r.exception_info and r.exception_info.get("raised_exception"):
        out["exception"] = str(r.exception_info.get("exception_message"))
    return out


def _plain(v: Any) -> Any:
    """JSON-friendly copy (tuples → lists, numpy/pandas scalars → Python, NA → None)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_plain(x) for x in (sorted(v, key=str) if isinstance(v, set) else v)]
    if v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def duplicate_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Exact-duplicate groups: rows involved, extra copies, groups spanning usages or with conflicting labels."""
    dup = frame[frame["is_duplicate"] == 1]
    groups = dup.groupby("image_hash", sort=False)
    labeled = dup[dup["emotion"] != UNLABELED]
    n = max(len(frame), 1)
    return {
        "groups": int(groups.ngroups),
        "rows_in_groups": int(len(dup)),
        "extra_copies": int(len(dup) - groups.ngroups),
        "fraction_rows": round(len(dup) / n, 6),
        "cross_usage_groups": int((groups["usage"].nunique() > 1).sum()),
        "conflicting_label_groups": int((labeled.groupby("image_hash")["emotion"].nunique() > 1).sum()),
    }


def validate_frame(frame: pd.DataFrame, params: dict[str, Any] | None = None, docs_dir: str | Path | None = None,
                   context_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the suite on a dataset view; returns the validation report (success = no critical failure)."""
    vr = run_suite(frame, params, docs_dir, context_dir)
    failed = [_failure(r) for r in vr.results if not r.success]
    critical = [f for f in failed if f["severity"] == "critical"]
    warns = [f for f in failed if f["severity"] != "critical"]
    blank_rows = np.flatnonzero(frame["is_blank"].to_numpy() == 1)
    train = frame["train_emotion"].dropna().astype(int)
    low = float({**DEFAULTS, **(params or {})}["min_class_fraction"])
    for f in warns:  # name the rare classes: the expectation itself only observes the smallest share
        if f["column"] == "train_class_fraction":
            f["rare_classes"] = {EMOTIONS[c]: round(float((train == c).mean()), 6) for c in range(NUM_CLASSES)
                                 if 0 < (train == c).mean() < low}
            f["min_class_fraction"] = low
    return {
        "success": not critical,
        "suite": SUITE_NAME,
        "suite_version": SUITE_VERSION,
        "n_rows": int(len(frame)),
        "n_labeled": int((frame["emotion"] != UNLABELED).sum()),
        "usage_counts": {str(k): int(v) for k, v in frame["usage"].value_counts().items()},
        "train_class_fractions": {EMOTIONS[c] if 0 <= c < NUM_CLASSES else str(c): round(float((train == c).mean()), 6)
                                  for c in sorted(set(train.tolist()) | set(range(NUM_CLASSES)))} if len(train) else {},
        "expectations": {"evaluated": len(vr.results), "passed": sum(r.success for r in vr.results)},
        "critical": critical,
        "warnings": warns,
        "duplicates": duplicate_summary(frame),
        "blanks": {"count": int(len(blank_rows)), "fraction": round(len(blank_rows) / max(len(frame), 1), 6),
                   "rows": blank_rows[:50].tolist()},
        "data_docs": str(Path(docs_dir) / "index.html") if docs_dir is not None else None,
    }


def validate_dataset(data: FerData, params: dict[str, Any] | None = None, docs_dir: str | Path | None = None,
                     context_dir: str | Path | None = None) -> dict[str, Any]:
    """validate_frame() of a canonical dataset, with rows also named by `source_id` (`fer2013:<row>`, an image's
    path), which point back into the source — the frame's indices count rows of fer.npz."""
    report = validate_frame(frame_from_ferdata(data), params, docs_dir, context_dir)
    ids = np.asarray(data.source_id).astype(str)
    report["blanks"]["source_ids"] = ids[report["blanks"]["rows"]].tolist()
    for f in report["critical"] + report["warnings"]:
        index = [i for i in f.get("partial_unexpected_index_list") or [] if isinstance(i, int) and 0 <= i < len(ids)]
        if index:
            f["source_ids"] = ids[index].tolist()
    return report


def describe_failures(report: dict[str, Any], source: str = "dataset", key: str = "critical") -> str:
    """Readable lines, one per failed expectation: what, where (rows), observed values, fix."""
    lines = []
    for f in report[key]:
        col = f["column"] if isinstance(f["column"], str) else "/".join(map(str, f["column"]))
        what = f"{f['expectation']}({col})"
        if f.get("missing_classes"):
            detail = f"missing: {', '.join(f['missing_classes'])}"
        elif f.get("rare_classes"):
            detail = (f"below {f['min_class_fraction']:g}: "
                      + ", ".join(f"{name} {share:.4f}" for name, share in f["rare_classes"].items()))
        elif "unexpected_count" in f:
            vals = ", ".join(f"{c['value']!r}×{c['count']}" for c in f.get("partial_unexpected_counts", [])[:5])
            where = (f"source rows {f['source_ids'][:10]}" if f.get("source_ids")
                     else f"row index {f.get('partial_unexpected_index_list', [])[:10]}")
            detail = f"{f['unexpected_count']} row(s) fail, e.g. values {vals} at {where}"
        else:
            obs = f.get("observed")
            detail = f"observed {round(obs, 4) if isinstance(obs, float) else obs!r}"
        lines.append(f"  - {what}: {f['why']}; {detail}. Fix: {f['fix']}.")
    level = "critical" if key == "critical" else "warning-level"
    head = f"{source}: {len(report[key])} {level} data check(s) failed (suite {report['suite']}):"
    return "\n".join([head, *lines])


def raise_on_critical(report: dict[str, Any], source: str) -> None:
    """DataError listing the failed critical expectations, if any."""
    if report["critical"]:
        raise DataError(describe_failures(report, source, "critical")
                        + "\nSee the Data Docs for details: " + str(report.get("data_docs") or "(not built)"))
