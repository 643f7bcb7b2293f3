"""The model card of a registered version: what the model is, what it was trained and chosen on, how well it
does (per class too), how to call it, and where it fails. Markdown, pure: the register stage writes it to
reports/model_card.md and sets it as the version's description in the MLflow registry (its UI renders it)."""

from __future__ import annotations

from typing import Any, Collection

from ferops.constants import EMOTIONS, IMG_SIZE

DESCRIPTION_MAX = 5000  # MLflow's SQL stores hold a model version description of up to 5,000 characters


def _pct(x: Any) -> str:
    try:
        return f"{100 * float(x):.2f} %"
    except (TypeError, ValueError):
        return "–"


def _arch(config: dict[str, Any]) -> str:
    """One line on the network from its config.json (the keys a ferops architecture uses, when present)."""
    bits = [f"architecture `{config.get('arch', '?')}`"]
    if config.get("stages"):
        bits.append(f"stages {list(config['stages'])}")
    if config.get("widths"):
        bits.append(f"widths {list(config['widths'])}")
    if config.get("ensemble_seeds"):
        bits.append(f"an average of {len(config['ensemble_seeds'])} members (seeds {list(config['ensemble_seeds'])})")
    return ", ".join(bits)


def _epochs(metrics: dict[str, Any]) -> str:
    """`; 38 epochs (best 34)`, or an ensemble's per member: `; 31 + 30 epochs, one member after the other (best
    27, 25)` (its metrics.json has no single best epoch, and epochs_run is the members' sum)."""
    n = int(metrics.get("n_members") or 0)
    if n > 1:
        runs = " + ".join(str(metrics.get(f"m{i}_epochs_run", "?")) for i in range(1, n + 1))
        best = ", ".join(str(metrics.get(f"m{i}_best_epoch", "?")) for i in range(1, n + 1))
        return f"; {runs} epochs, one member after the other (best {best})"
    return f"; {metrics['epochs_run']} epochs (best {metrics.get('best_epoch', '?')})"


def _duration(seconds: float) -> str:
    """`45 s`, `12 min`, `1 h 32 min`: a short run must not read as `0 min`."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _splits(ingest: dict[str, Any], split: dict[str, Any] | None) -> tuple[str, str, str]:
    """(the data sentence's split part, val label, test label) from reports/split.json: FER2013's PublicTest and
    PrivateTest only when the split is the competition file's Usage column as it is (not the demo set's, nor an image
    folder's val/ and test/); else the split says how it was made."""
    split = split or {}
    n, usage = split.get("n") or {}, ingest.get("per_usage") or {}
    train, val, test = (n.get("train", usage.get("Training", "?")), n.get("val", usage.get("PublicTest", "?")),
                        n.get("test", usage.get("PrivateTest", "?")))
    usage_split = split.get("strategy", "usage") == "usage"
    competition = not ingest.get("synthetic") and ingest.get("format", "fer2013") in ("fer2013", "icml")
    if usage_split and not split.get("val_carved_from_train") and competition:
        return (f"train {train} rows, validation = PublicTest {val}, test = PrivateTest {test}",
                "validation (PublicTest)", "test (PrivateTest)")
    how = ("validation carved from the training rows, per class (split.val_from_train)"
           if usage_split and split.get("val_carved_from_train") else
           "the dataset's own train, validation and test rows" if usage_split else
           "a stratified random split by class (split.fractions)")
    return f"train {train} rows, validation {val}, test {test}: {how}", "validation", "test"


def _scaled(temperatures: dict[str, float] | None, tta: str, test: dict[str, Any]) -> str:
    """The card's sentence on temperature scaling: each served mode's temperature, and the ECE before it."""
    temps = temperatures or {}
    modes = [m for m in dict.fromkeys(("none", tta)) if m in temps]
    if not modes:  # only other modes' (a hand-set tag): the ones the card describes are served raw
        return ""
    ts = " and ".join(f"{temps[m]:g} {'for the single pass' if m == 'none' else f'with `{m}`'}" for m in modes)
    # test_ece_raw is the served mode's (tta), test_ece_single_raw the single pass's: each named, as the sentence
    # before names both temperatures
    raw = {"none": test.get("test_ece_single_raw"), tta: test.get("test_ece_raw")}
    was = [f"{100 * float(e):.1f} points {'for the single pass' if m == 'none' else f'with `{m}`'}"
           for m in modes if (e := raw.get(m)) is not None]
    before = f"; unscaled, the ECE was {' and '.join(was)}" if was else ""
    return (f" Each test-time augmentation mode's probabilities are divided, as logits, by a temperature fitted on "
            f"validation (temperature scaling: {ts}; a label never changes){before}.")


def model_card(*, name: str, version: str, model: str, config: dict[str, Any], metrics: dict[str, Any],
               test: dict[str, Any], ingest: dict[str, Any], tta: str, git_commit: str | None = None,
               split: dict[str, Any] | None = None, tta_chosen: bool = True,
               temperatures: dict[str, float] | None = None, code: str | None = None) -> str:
    """Markdown card for registered version `version` of `name`, made from training run `model`.

    `config` and `metrics` are the model directory's config.json and metrics.json (validation figures), `test`
    the evaluate stage's figures for it, `ingest` reports/ingest.json, `tta` the mode chosen on val (`tta_chosen`) or set in
    params.yaml, `split` reports/split.json (how val and test were made; None: FER2013's Usage column assumed),
    `temperatures` the calibration the version serves per TTA mode (fitted on val; None or {}: raw probabilities).
    """
    synthetic = bool(ingest.get("synthetic"))
    split_text, val_label, test_label = _splits(ingest, split)
    n_params = metrics.get("n_params")
    lines = [
        f"# {name} v{version}: facial-expression classifier",
        "",
        f"- **Model**: `{model}` ({_arch(config)})"
        + (f", {int(n_params) / 1e6:.2f} M parameters" if n_params else "")
        + (_epochs(metrics) if metrics.get("epochs_run") else "")
        + (f" in {_duration(float(metrics['train_wall_s']))}" if metrics.get("train_wall_s") else "")
        + (f", {metrics['precision']}" if metrics.get("precision") else "") + ".",
        f"- **Input**: a {IMG_SIZE}×{IMG_SIZE} grey face crop (FER2013's 2,304 pixels, grey levels 0–255), or any photo: "
        "`ferops predict` finds and crops the faces first (small near-square images, ≤ 128 px, are taken as a face "
        "crop whole unless `--faces detect`); the REST `image` column does so with "
        "`\"params\": {\"crop_face\": true}` (without it the whole image is taken as one face).",
        f"- **Output**: one of {len(EMOTIONS)} expressions ({', '.join(EMOTIONS)}) with the 7 probabilities.",
        f"- **Code**: trained at git commit `{(git_commit or 'unknown')[:12]}`"
        + (f"; serves with the ferops code registered with it (`code_sha256` `{code}`)" if code else "") + ".",
        "",
        "## Data and selection",
        "",
        ("**Synthetic demo faces** (no real data was in `data/raw/`): the figures below say nothing about real "
         "faces; put FER2013 in `data/raw/` and run `make run`." if synthetic else
         f"FER2013 (`{ingest.get('source', '?')}`, sha256 `{str(ingest.get('sha256', '?'))[:12]}`): {split_text}."),
        "",
        "Chosen by validation accuracy as served (with its test-time augmentation mode) among the trained "
        "candidates of its architecture ("
        + ("early stopping and the test-time augmentation mode were chosen on validation too" if tta_chosen else
           f"early stopping chose its epoch on validation too; the test-time augmentation mode, `{tta}`, was set in "
           "params.yaml `evaluate.tta`")
        + "); the test split was scored once, after selection, and never used to choose.",
        "",
        "## Accuracy",
        "",
        "| split | accuracy | macro-F1 |",
        "|---|---:|---:|",
        f"| {val_label}, single pass | {_pct(metrics.get('val_accuracy'))} | {_pct(metrics.get('val_macro_f1'))} |",
    ]
    with_tta = tta != "none" and test.get("test_accuracy_tta") is not None
    if with_tta and test.get("val_accuracy_tta") is not None:
        lines.append(f"| {val_label}, test-time augmentation `{tta}` | {_pct(test['val_accuracy_tta'])} | – |")
    lines.append(f"| {test_label}, single pass | {_pct(test.get('test_accuracy'))} | {_pct(test.get('test_macro_f1'))} |")
    if with_tta:
        lines.append(f"| {test_label}, test-time augmentation `{tta}` | {_pct(test.get('test_accuracy_tta'))} | "
                     f"{_pct(test.get('test_macro_f1_tta'))} |")
    if test.get("test_n_seen") and test.get("test_accuracy_unseen") is not None:
        unseen = _pct(test["test_accuracy_tta_unseen"] if with_tta and test.get("test_accuracy_tta_unseen") is not None
                      else test["test_accuracy_unseen"])
        lines += ["", f"{int(test['test_n_seen'])} {test_label} images are exact copies of training images, which the "
                      "model scores far better (it trained on them); on the other test images it reaches "
                      f"{unseen}{f' with `{tta}`' if with_tta else ''}: what a new face can expect."]
    if test.get("test_ece") is not None:
        mode = f"with `{tta}` (what `ferops predict` and a REST request with `tta: auto` get)" if tta != "none" else ""
        single = test.get("test_ece_single")
        plain = ""
        if tta != "none" and single is not None:  # "off by 3.4 … off by 3.4" read as a contrast: say "as much"
            same = f"{100 * float(single):.1f}" == f"{100 * float(test['test_ece']):.1f}"
            plain = (f"; a plain REST request (single pass) gets probabilities off by "
                     f"{'as much' if same else f'{100 * float(single):.1f} points'}")
        lines += ["", f"Calibration: the probabilities {mode or 'served'} are off from the accuracy they achieve by "
                      f"{100 * float(test['test_ece']):.1f} points on average (expected calibration error on test; "
                      f"`reports/evaluation/{model}/calibration_test.png`){plain}." + _scaled(temperatures, tta, test)]
    elif scaled := _scaled(temperatures, tta, test):
        lines += ["", "Calibration:" + scaled]
    keys = [e.lower() for e in EMOTIONS]
    no_val = _absent_from_val(split)
    if all(f"val_f1_{k}" in metrics for k in keys):
        lines += ["", "Per class, on validation, single pass:", "",
                  "| class | precision | recall | F1 |", "|---|---:|---:|---:|"]
        lines += [f"| {e} | {_pct(metrics.get(f'val_precision_{k}'))} | "
                  f"{'–' if e in no_val else _pct(metrics.get(f'val_recall_{k}'))} | "
                  f"{_pct(metrics.get(f'val_f1_{k}'))} |" for e, k in zip(EMOTIONS, keys)]
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        "ferops predict photo.jpg          # JSON per face; --tta auto (the default) uses the mode above",
        "make serve                        # REST on http://127.0.0.1:5001/invocations",
        "curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\",
        "  -d '{\"dataframe_split\": {\"columns\": [\"pixels\"], \"data\": [[\"<2304 grey levels>\"]]}, "
        "\"params\": {\"tta\": \"auto\"}}'",
        "```",
        "",
        "## Limitations",
        "",
    ]
    lines += _limitations(metrics, ingest, no_val)
    card = "\n".join(lines) + "\n"
    return card if len(card) <= DESCRIPTION_MAX else card[:DESCRIPTION_MAX - 20] + "\n\n…(cut)\n"


def _absent_from_val(split: dict[str, Any] | None) -> set[str]:
    """The classes reports/split.json counts no validation row of: their val recall (0 by convention) means nothing."""
    counts = ((split or {}).get("per_class") or {}).get("val") or {}
    return {e for e in EMOTIONS if e in counts and not int(counts[e])}


def _limitations(metrics: dict[str, Any], ingest: dict[str, Any], no_val: Collection[str] = ()) -> list[str]:
    """What a user should know before trusting a prediction, with this model's own weakest classes (among those
    validation has rows of: `no_val` are left out)."""
    out = []
    recalls = {e: metrics.get(f"val_recall_{e.lower()}") for e in EMOTIONS if e not in no_val}
    known = sorted((float(r), e) for e, r in recalls.items() if r is not None)
    if known:
        weak = ", ".join(f"{e} ({100 * r:.0f} %)" for r, e in known[:2])
        out.append(f"- Weakest classes by validation recall (single pass): {weak}: these faces are the most often given "
                   "another label.")
    counts = ingest.get("per_class") or {}
    total = sum(int(v) for v in counts.values()) if counts else 0
    if total and not ingest.get("synthetic"):
        least = min(int(v) for v in counts.values())
        rare = [c for c, v in counts.items() if int(v) == least]
        if len(rare) == len(counts):  # balanced: no class has the least (min() named the first of a tie)
            out.append(f"- Every class is {100 * least / total:.1f} % of the labelled rows.")
        else:
            out.append(f"- {' and '.join(rare)} {'is' if len(rare) == 1 else 'are each'} {100 * least / total:.1f} % "
                       "of the labelled rows: the least data behind any class.")
    out += [
        "- FER2013's faces were collected by web image search; its labels are noisy (human accuracy on it is about "
        "65 ± 5 %, Goodfellow et al. 2013), and many of its expressions are posed.",
        f"- Trained on {IMG_SIZE}-px grey crops of near-frontal faces: small, turned, occluded or badly lit faces, and "
        "faces the detector misses, are classified worse or not at all.",
        "- The data set's balance of ages, skin tones and genders has not been audited here: measure accuracy on "
        "your own population before relying on it, and do not use it for decisions about individuals.",
    ]
    return out
