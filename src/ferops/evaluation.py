"""Score every trained model once on the test split, compare them, and predict the unlabeled rows.

Selection (the submission model, the comparison order) uses validation accuracy only; the test split
is scored here, once per model, and never feeds a choice.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferops.constants import EMOTIONS, NUM_CLASSES, TTA_SETTINGS
from ferops.data.io import FerData, read_json
from ferops.errors import DataError
from ferops.metrics import classification_metrics, confusion
from ferops.tta import TTA_VIEW_MODES, average_views, predict_proba, view_indices, view_probas

log = logging.getLogger("ferops.evaluation")

MODEL_FILES: dict[str, str] = {"baseline": "model.joblib", "deep": "model.keras"}
KIND_DIRS: dict[str, str] = {"baseline": "baselines", "deep": "deep"}
TTA_MODES: tuple[str, ...] = TTA_VIEW_MODES  # none | flip | tencrop | shift, cheapest first (fewest views)
# evaluate.tta `auto` (constants.TTA_SETTINGS): each deep model gets the TTA mode with the best VALIDATION accuracy
# (ties: the cheaper mode).
# Keys of reports/metrics.json, per model (DVC metrics). test_ece*: the probabilities served, a deep model's calibrated by
# temperatures fitted on val; *_raw: the same before that scaling.
# val_accuracy_tta: with the mode served (the figure recipe changes are judged by). *_unseen: on the test images that
# are not exact copies of a train image (FER2013 keeps 259 such copies in PrivateTest under `split.duplicates: report`,
# scored far above the rest: memorised); test_n_seen counts those copies. epochs_run (deep models) and train_wall_s:
# what the training cost — a time-budgeted model's epochs depend on the host and what else ran, so `dvc exp show`
# says when two experiments' figures came from unequal training.
SUMMARY_KEYS: tuple[str, ...] = ("val_accuracy", "val_macro_f1", "val_accuracy_tta", "test_accuracy", "test_accuracy_tta",
                                 "test_macro_f1", "test_macro_f1_tta", "test_weighted_f1", "test_ece", "test_ece_single",
                                 "test_ece_raw", "test_ece_single_raw", "test_accuracy_unseen",
                                 "test_accuracy_tta_unseen", "test_n_seen", "epochs_run", "train_wall_s")


@dataclass
class ModelEntry:
    """One trained model directory (train stages' contract) and its training metrics.json."""

    name: str
    kind: str
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # name in reports: `name`, or `<kind dir>/<name>` when a name exists in both kinds

    def __post_init__(self) -> None:
        self.key = self.key or self.name

    @property
    def arch(self) -> str:
        """Architecture of a deep model, the estimator kind of a baseline."""
        return str(self.metrics.get("arch") or self.config.get("arch") or self.metrics.get("estimator") or self.name)


PARAMS_SECTIONS: dict[str, str] = {"baseline": "train_baselines", "deep": "train_deep"}  # where each kind's models are listed


def declared_models(params: dict[str, Any]) -> dict[str, set[str]]:
    """The model names params.yaml lists per kind (train_baselines.models, train_deep.models)."""
    return {kind: set((params.get(sect) or {}).get("models") or {}) for kind, sect in PARAMS_SECTIONS.items()}


def discover_models(models_root: str | Path, declared: dict[str, set[str]] | None = None) -> list[ModelEntry]:
    """Every model dir under <root>/baselines/* and <root>/deep/* holding its model file and metrics.json; with
    `declared` (declared_models), only those params.yaml lists. DVC leaves a removed or renamed model's folder in
    place, and scoring it would put a model the params no longer describe in the reports, or in the registry."""
    root = Path(models_root)
    entries: list[ModelEntry] = []
    for kind, sub in KIND_DIRS.items():
        for d in sorted(p for p in (root / sub).glob("*") if p.is_dir()):
            if declared is not None and d.name not in declared.get(kind, set()):
                log.warning("%s: not in params.yaml %s.models — skipped (left by a removed or renamed model; "
                            "delete the folder)", d, PARAMS_SECTIONS[kind])
                continue
            if not (d / MODEL_FILES[kind]).exists():
                log.warning("%s: no %s — skipped (not a finished %s model)", d, MODEL_FILES[kind], kind)
                continue
            if not (d / "metrics.json").exists():
                raise DataError(f"{d / 'metrics.json'}: missing — every trained model needs its validation metrics; "
                                f"re-run its training stage (`dvc repro`).")
            metrics = read_json(d / "metrics.json")
            if "val_accuracy" not in metrics:
                raise DataError(f"{d / 'metrics.json'}: no `val_accuracy` — it is what models are selected by; "
                                f"re-run its training stage.")
            config = read_json(d / "config.json") if (d / "config.json").exists() else {}
            entries.append(ModelEntry(d.name, kind, d, metrics, config))
    names = [e.name for e in entries]
    for e in entries:  # the same name as a baseline and a deep model: keep both apart in reports
        if names.count(e.name) > 1:
            e.key = f"{KIND_DIRS[e.kind]}/{e.name}"
    if not entries:
        raise DataError(f"{root}: no trained models found under baselines/*/ or deep/*/ — run the training stages "
                        f"first (`dvc repro train_baselines train_deep`).")
    return entries


def _baseline_proba(model: Any, pixels: np.ndarray) -> np.ndarray:
    """predict_proba on flattened raw pixels, spread over all 7 classes (a class absent in training gets 0)."""
    x = pixels.reshape(len(pixels), -1).astype(np.float32)
    out = np.zeros((len(pixels), NUM_CLASSES), dtype=np.float64)
    if len(pixels) == 0:
        return out
    p = model.predict_proba(x)
    classes = np.asarray(getattr(model, "classes_", np.arange(p.shape[1]))).astype(int)
    out[:, classes] = p
    return out


def load_model(entry: ModelEntry) -> Any:
    """The model object of one entry: joblib estimator, or the Keras model as it is served (`load_keras`)."""
    if entry.kind == "baseline":
        import joblib

        return joblib.load(entry.path / MODEL_FILES["baseline"])
    from ferops.inference import load_keras

    return load_keras(entry.path / MODEL_FILES["deep"])


def predict_probs(entry: ModelEntry, model: Any, pixels: np.ndarray, tta: str, batch_size: int) -> np.ndarray:
    """Class probabilities [N,7] for raw pixels [N,48,48]; `tta` applies to deep models only."""
    if entry.kind == "baseline":
        return _baseline_proba(model, pixels)
    if len(pixels) == 0:
        return np.zeros((0, NUM_CLASSES))
    return np.asarray(predict_proba(model, pixels, batch_size=batch_size, tta=tta))


def score(y_true: np.ndarray, probs: np.ndarray, probs_tta: np.ndarray | None,
          seen: np.ndarray | None = None) -> dict[str, Any]:
    """test_* metrics of plain predictions, plus test_accuracy_tta / test_macro_f1_tta when TTA ran; with `seen`
    (per row: the image is also in train), the accuracies on the other rows (`*_unseen`) and the count seen."""
    out = classification_metrics(y_true, probs.argmax(1), prefix="test_")
    if probs_tta is not None:
        tta = classification_metrics(y_true, probs_tta.argmax(1), prefix="t_")
        out["test_accuracy_tta"] = tta["t_accuracy"]
        out["test_macro_f1_tta"] = tta["t_macro_f1"]
    if seen is not None:
        out["test_n_seen"] = int(seen.sum())
        new = ~seen
        if 0 < out["test_n_seen"] < len(seen):  # with none seen, they would repeat test_accuracy; with all, no rows
            out["test_accuracy_unseen"] = float((probs[new].argmax(1) == y_true[new]).mean())
            if probs_tta is not None:
                out["test_accuracy_tta_unseen"] = float((probs_tta[new].argmax(1) == y_true[new]).mean())
    return out


def seen_in(pixels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image of `pixels`: whether an exactly equal image is in `reference` (e.g. test rows against train)."""
    from ferops.data.split import image_hashes

    if len(pixels) == 0 or len(reference) == 0:
        return np.zeros(len(pixels), dtype=bool)
    known = set(image_hashes(reference))
    return np.array([h in known for h in image_hashes(pixels)], dtype=bool)


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray) -> list[tuple[str, str]]:
    """Long-format (actual, predicted) class-name pairs, one per test image (DVC `confusion` template)."""
    return [(EMOTIONS[int(a)], EMOTIONS[int(p)]) for a, p in zip(y_true, y_pred)]


def _write_csv(path: Path, header: list[str], rows: Any) -> Path:
    """A CSV file: the header row, then `rows`."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_confusion(y_true: np.ndarray, y_pred: np.ndarray, out_dir: Path, title: str) -> list[Path]:
    """confusion_test.png (row-normalised heat map) and confusion_test.csv (actual,predicted) in out_dir."""
    from ferops.plots import confusion_matrix_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = _write_csv(out_dir / "confusion_test.csv", ["actual", "predicted"], confusion_rows(y_true, y_pred))
    png = confusion_matrix_plot(confusion(y_true, y_pred), out_dir / "confusion_test.png", title=title)
    return [png, csv_path]


def write_diagnostics(y_test: np.ndarray, probs_test: np.ndarray, val: FerData | None, probs_val: np.ndarray | None,
                      out_dir: Path, name: str, *, mistakes_dir: Path, calibration: str = "",
                      views: str = "") -> tuple[list[Path], float]:
    """calibration_test.png (reliability diagram of the probabilities a user gets, i.e. with the chosen TTA and its
    calibration, which `calibration` describes in the title) and,
    with val predictions, mistakes_val.png (the most confident val errors per class) in out_dir and
    <mistakes_dir>/mistakes_val.csv (every val error, most confident first, with its source id: where to look for
    label noise; not in out_dir, whose CSVs DVC draws as confusion matrices). `views` names the predictions (a deep
    model's TTA mode) in both titles. Error analysis stays on val, so whatever it suggests can be tried without
    touching test. Returns the files and the test ECE."""
    from ferops.diagnostics import calibration_bins, ece_of_bins, mistakes_grid, mistakes_rows, reliability_diagram

    out_dir.mkdir(parents=True, exist_ok=True)
    bins = calibration_bins(y_test, probs_test)
    ece = ece_of_bins(*bins)
    files = [reliability_diagram(*bins, out_dir / "calibration_test.png",
                                 title=f"{name} — test calibration (ECE {100 * ece:.1f} points{views and ', ' + views}"
                                       f"{calibration})")]
    if val is not None and probs_val is not None:
        lab = val.labeled
        files.append(mistakes_grid(val.pixels[lab], val.emotion[lab], probs_val, out_dir / "mistakes_val.png",
                                   title=f"{name} — most confident mistakes on val{views and ', ' + views} (row: "
                                         f"true class; caption: predicted, probability)"))
        mistakes_dir.mkdir(parents=True, exist_ok=True)
        files.append(_write_csv(mistakes_dir / "mistakes_val.csv",
                                ["actual", "predicted", "source_id", "p_predicted", "p_actual"],
                                mistakes_rows(val.source_id[lab], val.emotion[lab], probs_val)))
    return files, ece


def comparison_chart(results: list[dict[str, Any]], path: Path, tta: str = "auto") -> Path:
    """model_comparison.png: val as served (the figure the models are ranked by), test and test-with-TTA accuracy per
    model, best by val on top; the TTA bars are labelled with evaluate.tta (a fixed mode was set, not chosen on
    val)."""
    from ferops.diagnostics import model_comparison_chart

    rows = by_validation(results)
    return model_comparison_chart(
        [r["model"] for r in rows],
        {"val as served (deep: with TTA)": [served_val(r) for r in rows],
         "test, single pass": [r.get("test_accuracy") for r in rows],
         "test, TTA chosen on val" if tta == "auto" else f"test, TTA {tta}": [r.get("test_accuracy_tta") for r in rows]},
        path, title="Accuracy per model (sorted by val as served, which every choice uses)")


def result_of(entry: ModelEntry, test_metrics: dict[str, Any]) -> dict[str, Any]:
    """One model's row: identity, validation metrics from training, test metrics from here."""
    m = entry.metrics
    return {"model": entry.key, "kind": entry.kind, "arch": entry.arch, "dir": str(entry.path),
            "val_accuracy": float(m["val_accuracy"]), "val_macro_f1": _num(m.get("val_macro_f1")),
            "train_wall_s": _num(m.get("train_wall_s")),
            "epochs_run": None if m.get("epochs_run") is None else int(m["epochs_run"]), **test_metrics}


def full_val_scores(entry: ModelEntry, val: FerData | None, probs_val: np.ndarray | None) -> dict[str, float]:
    """Val accuracy and macro-F1 on the whole val split, for a model whose training scored a subsample of it
    (`train_baselines.val_max_rows`, recorded as `val_rows`): ranked on other rows than the rest, it could be chosen
    (or passed over) on the subsample's luck. {} when training saw every labeled val row."""
    n = entry.metrics.get("val_rows")
    if val is None or probs_val is None or n is None or int(n) >= int(val.labeled.sum()):
        return {}
    from ferops.metrics import classification_metrics

    m = classification_metrics(val.emotion[val.labeled].astype(int), probs_val.argmax(1), prefix="val_")
    log.warning("%s: training scored %d of the %d val rows (train_baselines.val_max_rows); ranked here on all of them: "
                "val accuracy %.4f (subsample %.4f)", entry.key, int(n), int(val.labeled.sum()), m["val_accuracy"],
                float(entry.metrics["val_accuracy"]))
    return {"val_accuracy": float(m["val_accuracy"]), "val_macro_f1": float(m["val_macro_f1"])}


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def served_val(r: dict[str, Any]) -> float:
    """Val accuracy of what a model serves: a deep model's with the TTA mode evaluate chose for it on val
    (`val_accuracy_tta`, what `ferops predict` and `tta: auto` answer with), else the single pass's."""
    v = r.get("val_accuracy_tta")
    return float(r["val_accuracy"] if v is None else v)


def by_validation(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results ordered best first by VALIDATION accuracy as served (`served_val`; ties: single-pass val accuracy, val
    macro-F1, then name); test is ignored."""
    return sorted(results, key=lambda r: (-served_val(r), -r["val_accuracy"], -(r.get("val_macro_f1") or 0.0),
                                          r["model"]))


def select_best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The model with the best validation accuracy as served (the submission model)."""
    if not results:
        raise DataError("no evaluated models to choose from")
    return by_validation(results)[0]


def metrics_summary(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """reports/metrics.json: per model the validation and headline test numbers (None where not applicable)."""
    return {r["model"]: {k: (None if r.get(k) is None else r[k] if isinstance(r[k], int) else round(float(r[k]), 6))
                         for k in SUMMARY_KEYS} for r in results}


def serving_summary(results: list[dict[str, Any]], tta: str) -> dict[str, dict[str, Any]]:
    """reports/serving.json: per deep model what register serves — the TTA mode used, whether chosen on val (`auto`) or
    set in params.yaml, each mode's temperature fitted on val (the values `log_to_run` tags the training run with),
    and the training run they belong to (register refuses them for a model trained since). A file, not only the
    tags: DVC sees it, and an experiment re-evaluating the same run cannot change the workspace's."""
    from ferops.tracking import read_run_id

    return {r["model"]: {"tta": r["tta_mode"], "tta_chosen": "val" if tta == "auto" else "params",
                         "temperatures": dict(sorted(r["temperatures"].items())), "run_id": read_run_id(Path(r["dir"]))}
            for r in results if r.get("kind") == "deep"}


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{100 * float(v):.2f}" if pct else f"{float(v):.0f}"


def choose_tta(model: Any, entry: ModelEntry, val: FerData | None, tta: str, batch_size: int
               ) -> tuple[str, dict[str, float], np.ndarray | None, dict[str, float]]:
    """The TTA mode to use on test for one model (chosen on val under `auto`, else the one set), the val accuracy
    of every mode (deep models with labeled val rows), the model's val probabilities under that mode (None without
    labeled val rows), and, for a deep model, the calibration temperature of every mode (`fit_temperature`), so that
    the served model answers a request for any mode calibrated, whichever mode evaluate used."""
    from ferops.diagnostics import fit_temperature

    has_val = val is not None and bool(val.labeled.any())
    if entry.kind == "deep" and tta == "auto" and not has_val:
        raise DataError("evaluate.tta=auto chooses the TTA mode on the validation split, which has no labeled "
                        "rows; set evaluate.tta to none | flip | tencrop | shift.")
    mode = tta if entry.kind == "deep" else "none"
    if val is None or not has_val:
        return mode, {}, None, {}
    if entry.kind != "deep":
        return mode, {}, predict_probs(entry, model, val.pixels[val.labeled], mode, batch_size), {}
    # Predict every view of every mode once (26; a crop-less model has only two), then average per mode. A set mode
    # pays for the views it does not use (93 k images of val: 0.7-1.8 min on 2 cores, against seconds for `none`), so
    # that each mode a request may ask for is calibrated.
    views = view_probas(model, val.pixels[val.labeled], batch_size, "all")
    y_val = val.emotion[val.labeled].astype(int)
    acc = accuracy_by_tta(views, y_val)
    if tta == "auto":
        mode = best_tta(acc)
    return mode, acc, tta_probas(views, mode), {m: fit_temperature(y_val, tta_probas(views, m)) for m in acc}


def tta_probas(all_views: list[np.ndarray], tta: str) -> np.ndarray:
    """Averaged probabilities of mode `tta`, from the per-view probabilities of an `all` `view_probas` call."""
    return average_views([all_views[i] for i in view_indices(tta, len(all_views))])


def accuracy_by_tta(all_views: list[np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Accuracy of every TTA mode, from the per-view probabilities of an `all` `view_probas` call."""
    return {m: float((tta_probas(all_views, m).argmax(1) == y).mean()) for m in TTA_MODES}


def best_tta(val_accuracy_by_mode: dict[str, float]) -> str:
    """The mode with the best val accuracy; ties go to the cheaper mode (fewer views)."""
    return max(val_accuracy_by_mode, key=lambda m: (val_accuracy_by_mode[m], -TTA_MODES.index(m)))


def comparison_markdown(results: list[dict[str, Any]], tta: str, data: dict[str, Any] | None = None) -> str:
    """Markdown table of all models sorted by validation accuracy, with a per-class test F1 table."""
    rows = by_validation(results)
    best = rows[0]["model"] if rows else None
    data = data or {}
    unseen_col = any(r.get("test_accuracy_unseen") is not None for r in rows)
    lines = [
        "# Model comparison",
        "",
        f"Data: {'synthetic demo set' if data.get('synthetic') else 'real'} ({data.get('format', '?')}, "
        f"sha256 `{str(data.get('sha256', '?'))[:12]}`). Accuracies in %.",
        "",
        "Rows are sorted by **validation** accuracy as served (a deep model's with its TTA mode, in brackets), "
        "which is what every selection uses (the submission model and the registered ResNet). The test split is "
        "scored once per model here and never used to choose. "
        f"Headline test metric: `test_accuracy` (single pass, comparable across all models; so are the F1 columns "
        "and the per-class table); `test acc TTA` is "
        f"the deep models' accuracy with test-time augmentation `{tta}`"
        + (" (per model, the mode with the best val accuracy; in brackets)" if tta == "auto" else "") + " (baselines: –).",
        "",
        *_unseen_sentence(rows),
        "| # | model | kind | arch | val acc (TTA) | val macro-F1 | test acc | test acc TTA | "
        + ("test acc unseen (TTA) | " if unseen_col else "") + "test macro-F1 | test weighted-F1 | test ECE | "
        "train wall (s) |",
        "|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if unseen_col else "") + "---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows, 1):
        name = f"**{r['model']}** ★" if r["model"] == best else r["model"]
        unseen = _fmt(r.get("test_accuracy_unseen")) + (f" ({_fmt(r['test_accuracy_tta_unseen'])})"
                                                         if r.get("test_accuracy_tta_unseen") is not None else "")
        val_tta = f" ({_fmt(r['val_accuracy_tta'])})" if r.get("val_accuracy_tta") is not None else ""
        lines.append(f"| {i} | {name} | {r['kind']} | {r['arch']} | {_fmt(r['val_accuracy'])}{val_tta} | "
                     f"{_fmt(r.get('val_macro_f1'))} | {_fmt(r.get('test_accuracy'))} | "
                     f"{_fmt(r.get('test_accuracy_tta'))}{_mode(r, tta)} | {f'{unseen} | ' if unseen_col else ''}"
                     f"{_fmt(r.get('test_macro_f1'))} | "
                     f"{_fmt(r.get('test_weighted_f1'))} | {_fmt(r.get('test_ece'))}{_raw_ece(r)} | "
                     f"{_fmt(r.get('train_wall_s'), pct=False)} |")
    unlabeled = int(data.get("unlabeled") or 0)  # ingest's count: the rows the submission file predicts
    submits = (f"its predictions of the {unlabeled} unlabeled rows are in the submission file" if unlabeled else
               "it would predict the submission file's rows; this data has no unlabeled rows, so the file is empty")
    lines += ["", f"★ best by validation accuracy as served: `{best}` ({submits}). "
              "Test ECE: expected calibration error of the probabilities served (with TTA), in points: how far "
              "confidence is from accuracy (0 = calibrated; `calibration_test.png` per model); where a raw ECE "
              "follows in brackets, the probabilities were calibrated by a temperature fitted on val." + _sure(rows)
              + " Figures: "
              "`model_comparison.png`, and per model `confusion_test.png` (single pass), `calibration_test.png` and "
              "`mistakes_val.png` (with the TTA mode served) under the evaluation folder; every val error, most "
              "confident first (where label noise shows), in `mistakes/<model>/mistakes_val.csv`.", "",
              "## Test F1 per class (%)", "",
              "| model | " + " | ".join(EMOTIONS) + " |", "|---|" + "---:|" * len(EMOTIONS)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(_fmt(r.get(f"test_f1_{e.lower()}")) for e in EMOTIONS) + " |")
    return "\n".join(lines) + "\n"


def _sure(rows: list[dict[str, Any]]) -> str:
    """A clause for models whose ECE is 100 minus their accuracy: always sure (probability 1 for every answer, as KNN
    with k = 1), which reads as a calibration failure without it."""
    sure = [r["model"] for r in rows if r.get("test_ece") is not None and r.get("test_accuracy") is not None
            and abs(float(r["test_ece"]) - (1 - float(r["test_accuracy"]))) < 5e-4]
    one = len(sure) == 1
    return (f" {', '.join(f'`{m}`' for m in sure)} {'is' if one else 'are'} sure of every answer (probability 1, as "
            f"KNN with one neighbour), so {'its' if one else 'each one’s'} ECE is 100 minus its accuracy.") if sure else ""


def _unseen_sentence(rows: list[dict[str, Any]]) -> list[str]:
    """How many test images are copies of train images, and so why the `unseen` column exists ([] if not known)."""
    n = next((int(r["test_n_seen"]) for r in rows if r.get("test_n_seen") is not None), None)
    if n is None:
        return []
    if n == 0:
        return ["No test image is an exact copy of a train image.", ""]
    if not any(r.get("test_accuracy_unseen") is not None for r in rows):
        return [f"Every test image ({n}) is an exact copy of a train image: the test figures say nothing about new "
                "faces (`split.duplicates: drop` leaves such copies out of val and test).", ""]
    val = next((int(r["val_n_seen"]) for r in rows if r.get("val_n_seen")), 0)
    return [f"{n} test images are exact copies of a train image (kept by `split.duplicates: report`, as the published "
            "FER2013 figures keep them; `drop` removes them). Models that can recall their training images (the deep "
            "models, KNN) score far higher on those, so `test acc unseen` is the accuracy on the other test images: "
            "what a new face can expect."
            + (f" Val holds {val} such copies too, so every choice on val rewards that recall a little." if val else ""),
            ""]


def _raw_ece(r: dict[str, Any]) -> str:
    return f" ({_fmt(r['test_ece_raw'])} raw)" if r.get("test_ece_raw") is not None else ""


def _mode(r: dict[str, Any], tta: str) -> str:
    return f" ({r['tta_mode']})" if tta == "auto" and r.get("tta_mode") else ""


def load_predict(path: str | Path) -> FerData:
    """The unlabeled rows to predict (an empty dataset when the split wrote none)."""
    from ferops.data.io import load_npz

    p = Path(path)
    if p.exists():
        return load_npz(p)
    log.info("%s: absent — no unlabeled rows to predict (header-only submission)", p)
    return FerData(np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int8), np.zeros(0, str), np.zeros(0, str))


def write_submission(source_ids: np.ndarray, labels: np.ndarray, path: str | Path) -> Path:
    """Kaggle-style `id,emotion` CSV (header only when there is nothing to predict).

    Ingest's source ids are `<file stem>:<id or row>` for CSV rows; the submission keeps the id part (Kaggle's `id`
    column), whole even when it holds a colon itself. Image files' ids (their path) are kept as they are.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return _write_csv(p, ["id", "emotion"], ((submission_id(str(i)), int(y)) for i, y in zip(source_ids, labels)))


def submission_id(source_id: str) -> str:
    """The id part of a CSV row's `<file stem>:<id>` (split at the first colon: an id such as `img:07` stays whole,
    where the last colon made it `07`); an image's path (`test/x.png`, a folder before any colon) unchanged."""
    stem, sep, rest = source_id.partition(":")
    return rest if sep and "/" not in stem else source_id


def log_to_run(entry: ModelEntry, metrics: dict[str, Any], artifacts: list[Path], tta: str,
               chosen_on_val: bool = True, temperatures: dict[str, float] | None = None) -> bool:
    """Add test metrics and confusion artifacts to the model's own MLflow training run (False if gone); `tta` the
    mode used, `chosen_on_val` whether evaluate chose it (`evaluate.tta: auto`) or params.yaml named it,
    `temperatures` the calibration fitted on val per mode (tag `eval_temperatures`). The register stage reads them from
    reports/serving.json (`serving_summary`); the tags stay for the MLflow UI and for registering without that file."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    from ferops.tracking import find_run, reopen_run

    client, run_id = MlflowClient(), reopen_run(entry.path)
    run = find_run(run_id, client)  # a busy or unreachable store raises: the run's tags would go stale
    if run is None:  # the tracking store was reset since training: keep the files, warn
        log.warning("%s: MLflow run %s not in the store — test metrics only in reports/", entry.path, run_id)
        return False
    if run.info.lifecycle_stage == "deleted":  # deleted in the UI: evaluate must not stop there
        log.warning("%s: MLflow run %s was deleted — test metrics only in reports/ (restore the run in the MLflow "
                    "UI and re-run evaluate to log them there)", entry.path, run_id)
        return False
    # Logged by run id, not by reopening the run (start_run): that made a finished run RUNNING and moved its end time
    # to now, so the MLflow UI's duration of a 10-s training grew by every later stage and re-evaluation. A value the
    # run already holds is not logged again: a re-run of evaluate adds no copy to the metric's history.
    now = int(time.time() * 1000)
    metrics_new = [Metric(k, float(v), now, 0) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and run.data.metrics.get(k) != float(v)]
    tags = {"evaluated": "true", "eval_tta": tta if entry.kind == "deep" else "n/a",
            "eval_tta_chosen": "val" if chosen_on_val else "params",  # the model card's wording
            "eval_temperatures": json.dumps(temperatures or {}, sort_keys=True)}
    client.log_batch(run_id, metrics=metrics_new, tags=[RunTag(k, v) for k, v in tags.items()])
    for a in artifacts:
        client.log_artifact(run_id, str(a), artifact_path="evaluation")
    return True


def evaluate_all(entries: list[ModelEntry], test: FerData, predict: FerData, out_dir: str | Path, tta: str = "flip",
                 batch_size: int = 512, track: bool = True, val: FerData | None = None,
                 mistakes_dir: str | Path | None = None,
                 train_pixels: np.ndarray | None = None) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Score every model once on the labeled test rows; return results and the best-by-val model's predictions.

    `tta` is one mode for every deep model, or `auto`: per model, the mode with the best accuracy on `val`. Figures
    go to <out_dir>/<model>/, each model's list of val mistakes to <mistakes_dir>/<model>/ (default: a `mistakes`
    folder beside out_dir). With `train_pixels`, the accuracies are also given on the test images that are not
    exact copies of a train image (`score`'s `*_unseen`).
    """
    from tqdm import tqdm

    from ferops.diagnostics import expected_calibration_error as ece
    from ferops.inference import apply_temperature

    if tta not in TTA_SETTINGS:
        from ferops.errors import ConfigError

        raise ConfigError(f"evaluate.tta={tta!r}: use one of {', '.join(TTA_SETTINGS)}.")
    labeled = test.labeled
    if not labeled.any():
        raise DataError("test split has no labeled rows — cannot score models (check the split stage).")
    pixels, y = test.pixels[labeled], test.emotion[labeled].astype(int)
    seen = None if train_pixels is None else seen_in(pixels, train_pixels)
    val_seen = (int(seen_in(val.pixels[val.labeled], train_pixels).sum())
                if train_pixels is not None and val is not None else None)
    if seen is not None and seen.any():
        log.info("%d of the %d test images (and %s val images) are exact copies of a train image: accuracies without "
                 "them are test_accuracy*_unseen", int(seen.sum()), len(seen), val_seen)
    results: list[dict[str, Any]] = []
    modes: dict[str, str] = {}
    for entry in tqdm(entries, desc="evaluate", unit="model"):
        model = load_model(entry)
        mode, val_by_mode, probs_val, temps = choose_tta(model, entry, val, tta, batch_size)
        modes[entry.key] = mode
        if entry.kind == "deep":  # every mode's first view is the plain image: one pass gives both scores
            views = view_probas(model, pixels, batch_size, mode)
            probs, probs_tta = average_views(views[:1]), average_views(views)
        else:
            probs, probs_tta = predict_probs(entry, model, pixels, "none", batch_size), None
        metrics = score(y, probs, probs_tta, seen)
        metrics.update({f"val_accuracy_tta_{m}": a for m, a in val_by_mode.items()})
        if mode in val_by_mode:
            metrics["val_accuracy_tta"] = val_by_mode[mode]
        # The confusion matrix is the single pass's (test_accuracy); calibration and mistakes are what a user gets,
        # with the TTA mode chosen: each title says which.
        deep = entry.kind == "deep"
        files = write_confusion(y, probs.argmax(1), Path(out_dir) / entry.key,
                                f"{entry.key} — test acc {100 * metrics['test_accuracy']:.1f}%"
                                f"{' (single pass)' if deep else ''}")
        # What a user gets: each mode's probabilities at the temperature fitted on val (argmax, so every accuracy
        # above, unchanged); the raw ECEs say what calibration did.
        raw = probs if probs_tta is None else probs_tta
        t_mode = temps.get(mode, 1.0)
        raw_ece = ece(y, raw) if temps else None
        served = apply_temperature(raw, t_mode)
        served_val = None if probs_val is None else apply_temperature(probs_val, t_mode)
        note = (f", temperature {t_mode:g} fitted on val; {100 * raw_ece:.1f} points before"
                if raw_ece is not None and mode in temps else "")
        more, metrics["test_ece"] = write_diagnostics(
            y, served, val, served_val, Path(out_dir) / entry.key, entry.key, calibration=note,
            views=("single pass" if mode == "none" else f"TTA {mode}") if deep else "",
            mistakes_dir=Path(mistakes_dir or Path(out_dir).parent / "mistakes") / entry.key)
        # single pass too: what a plain REST request gets (ten-crop's average is far better calibrated raw)
        metrics["test_ece_single"] = (metrics["test_ece"] if probs_tta is None else
                                      ece(y, apply_temperature(probs, temps.get("none", 1.0))))
        if raw_ece is not None:
            metrics["test_ece_raw"] = raw_ece
            metrics["test_ece_single_raw"] = ece(y, probs)
            metrics.update({f"temperature_{m}": t for m, t in temps.items()})
        files += more
        if track:
            log_to_run(entry, metrics, files, mode, chosen_on_val=tta == "auto", temperatures=temps)
        results.append({**result_of(entry, metrics), **full_val_scores(entry, val, probs_val), "val_n_seen": val_seen,
                        **({"tta_mode": mode, "temperatures": temps} if entry.kind == "deep" else {})})
        log.info("%-16s val %.4f  test %.4f%s", entry.key, results[-1]["val_accuracy"], metrics["test_accuracy"],
                 f"  test(TTA {mode}) {metrics['test_accuracy_tta']:.4f}" if "test_accuracy_tta" in metrics else "")
        del model
    comparison_chart(results, Path(out_dir) / "model_comparison.png", tta)
    best = select_best(results)
    entry = next(e for e in entries if e.key == best["model"])
    log.info("submission model (best by val accuracy as served): %s", best["model"])
    if len(predict) == 0:
        return results, np.zeros(0, dtype=int)
    model = load_model(entry)
    probs = predict_probs(entry, model, predict.pixels, modes[entry.key], batch_size)
    return results, probs.argmax(1)
