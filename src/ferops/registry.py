"""MLflow model registry: register the best ResNet (by validation accuracy), champion/challenger aliases,
deliberate promotion and a readable listing (`ferops registry`, `ferops promote`).

Aliases replace the deprecated registry stages. Rules: every newly registered version gets the
challenger alias; it takes the champion alias only when there is no champion or its validation
accuracy beats the champion's (same validation data) — a worse model never silently replaces a better one.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import json
import logging
import os
import re
import shlex
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ferops.errors import DataError, FerError

log = logging.getLogger("ferops.registry")

REGISTER_FIX = "`make run` (or `dvc repro`) trains and registers the champion"
PARAMS_TAG_MAX = 5000  # model-version tag values: portable limit across SQL backends
# Temperatures that differ by less than this (relative) count as the same calibration: evaluate re-run on another host
# or library build refits T a few 1e-4 apart, and a version serving one of them is the same model as far as any
# probability it returns goes (under 1 % in log-odds) — not a reason for a new version and a moved alias
TEMPERATURE_RTOL = 0.01
REGISTER_STAGE = "register stage"  # promoted_by of a promotion the stage made (a person's carries their name)


class RegistryError(FerError):
    """Unknown registered model or version, or a registry state that needs a person's decision."""


def find_candidates(models_dir: str | Path, family: str, scored: Collection[str] | None = None) -> list[Any]:
    """Trained deep models under models_dir/* whose config.json `arch` is `family`, best validation accuracy first
    (as served, `evaluation.served_val`, where `scored` is evaluate's metrics.json with `val_accuracy_tta`); with
    `scored` (its keys), only those evaluate scored: a removed or renamed model's folder, which DVC leaves in place,
    is not registered."""
    from ferops.evaluation import ModelEntry, by_validation
    from ferops.data.io import read_json

    root = Path(models_dir)
    found: list[ModelEntry] = []
    for d in sorted(p for p in root.glob("*") if p.is_dir()):
        if not (d / "model.keras").exists() or not (d / "config.json").exists():
            continue
        if scored is not None and d.name not in scored and f"deep/{d.name}" not in scored:
            log.warning("%s: not in the evaluate stage's metrics (not in params.yaml?) — not a candidate", d)
            continue
        config = read_json(d / "config.json")
        if config.get("arch") != family:
            continue
        metrics = read_json(d / "metrics.json") if (d / "metrics.json").exists() else {}
        if "val_accuracy" not in metrics:
            raise DataError(f"{d / 'metrics.json'}: missing or without `val_accuracy` — the registry chooses by it; "
                            f"re-run `dvc repro train_deep@{d.name}`.")
        found.append(ModelEntry(d.name, "deep", d, metrics, config))
    if not found:
        raise DataError(f"{root}: no trained model with arch `{family}` (register.family) — train one first, e.g. "
                        f"`dvc repro train_deep@{family}`, or set register.family to a trained architecture.")
    rows = scored if isinstance(scored, Mapping) else {}
    order = {r["model"]: i for i, r in enumerate(by_validation([_ranking_row(e, rows) for e in found]))}
    return sorted(found, key=lambda e: order[e.name])


def _ranking_row(entry: Any, eval_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate's figures as evaluation.by_validation ranks them: its training val figures, and evaluate's val
    accuracy with the TTA mode served (`val_accuracy_tta`, when evaluate's metrics.json has it)."""
    return {"model": entry.name, "val_accuracy": float(entry.metrics["val_accuracy"]),
            "val_macro_f1": entry.metrics.get("val_macro_f1"),
            "val_accuracy_tta": _test_metrics(eval_metrics, entry.name).get("val_accuracy_tta")}


def champion_decision(new_version: str, new_val: float, new_data: dict[str, str],
                      champion: dict[str, Any] | None, new_run_id: str | None = None,
                      reused: bool = False, experiment: str | None = None,
                      compared_before: bool = False, new_served: float | None = None,
                      new_tta: str | None = None) -> tuple[bool, str]:
    """Whether the new version takes the champion alias, and why (pure: compares tags only).

    `champion` holds the current champion's `version` and its tags (`val_accuracy`, `data_sha256`, `dataset`, and
    `val_digest` and `val_accuracy_served` on versions registered since they were recorded). The val accuracies
    compared are those as served (`new_served`, with the TTA mode evaluate chose on val) when both versions have
    one, else the single pass's.
    `reused`: the version was registered by an earlier run of the stage, so it was compared then; if the alias is
    elsewhere now, a person moved it (`ferops promote`, a rollback) or a better model took it, and a re-run of the
    stage (code update, `dvc exp apply`) must not take it back. `compared_before`: another version of the same
    training run was (one with older serving code, say): a new version of it must not take the alias back either,
    unless the alias is on that run's own model: it follows its newest serving code and calibration, and the TTA
    mode evaluate chose (`new_tta`) unless a person chose the champion's mode.
    `experiment`: the DVC experiment this run of the stage belongs to (`dvc exp run`, `make exp`): an experiment is a
    trial, which params.yaml need not describe afterwards (`make exp` puts it back), so its model stays @challenger,
    a better one or the champion's own run registered again with an experiment's TTA mode alike.
    """
    if champion is None:
        return True, "no champion yet"
    cv = str(champion["version"])
    if cv == str(new_version):
        return True, f"version {cv} is already the champion"
    # Another version of the champion's own run (a new TTA mode, newer serving code) follows it — unless a person put
    # the alias where it is: then neither a re-run that reuses an older version nor a new version in another TTA mode
    # may undo that (a rollback to the other mode, say); new code for the mode the person chose still follows.
    by_stage = champion.get("promoted_by") == REGISTER_STAGE
    same_mode = new_tta is None or champion.get("tta_mode") in (None, new_tta)
    own = by_stage or (not reused and same_mode)
    if new_run_id and champion.get("run_id") == new_run_id and own:
        if experiment:  # `dvc exp run -S evaluate.tta=flip`: the champion would serve flip after params.yaml is back
            return False, (f"the champion's model (run {new_run_id}) registered again in DVC experiment "
                           f"{experiment!r}: an experiment does not move @champion (v{cv}); `ferops promote --version "
                           f"{new_version}` does, deliberately")
        return True, (f"the champion's model (run {new_run_id}) registered again, serving with the current serving "
                      f"code and what evaluate chose on val: TTA mode and calibration (was v{cv})")
    served, new_val, champ_val = _compared(new_val, new_served, champion)
    what = "val accuracy as served" if served else "val_accuracy"
    if reused or compared_before:
        # the figures too: without them "compared before" read as a rollback even where the model had simply lost
        by, figures = champion.get("promoted_by"), ""
        if champ_val is not None:
            figures = f" ({what} {new_val:.4f} against champion v{cv}'s {champ_val:.4f})"
        return False, (f"the model of v{new_version} (run {new_run_id}) was registered and compared before{figures}; "
                       f"a re-run does not move @champion from v{cv}{f' (set by {by})' if by else ''} — "
                       f"`ferops promote --version {new_version}` does, deliberately")
    if champ_val is None:
        return False, (f"champion v{cv} has no val_accuracy tag to compare with; compare by hand and run "
                       f"`ferops promote --version {new_version}` if it should win")
    if champion.get("data_sha256") != new_data.get("data_sha256"):
        if champion.get("dataset") == "synthetic" and new_data.get("dataset") == "real":
            return True, f"a real-data model replaces champion v{cv}, trained on the synthetic demo set"
        return _not_comparable(cv, f"other data (sha256 {str(champion.get('data_sha256'))[:12]} ≠ "
                                   f"{str(new_data.get('data_sha256'))[:12]})", new_version)
    if champion.get("val_digest") and new_data.get("val_digest") and champion["val_digest"] != new_data["val_digest"]:
        return _not_comparable(cv, f"another val split (digest {champion['val_digest'][:12]} ≠ "
                                   f"{new_data['val_digest'][:12]}: the split params changed)", new_version)
    what += " (with its TTA mode)" if served else ""
    if round(new_val, 6) > champ_val:  # the tag holds 6 decimals: an equal score must not "beat" its rounding
        if experiment:
            return False, (f"{what} {new_val:.4f} beats champion v{cv}'s {champ_val:.4f}, but in DVC experiment "
                           f"{experiment!r}: an experiment does not move @champion (it is a trial); `ferops promote "
                           f"--version {new_version}` does, deliberately")
        return True, f"{what} {new_val:.4f} beats champion v{cv}'s {champ_val:.4f}"
    return False, f"{what} {new_val:.4f} does not beat champion v{cv}'s {champ_val:.4f}: champion unchanged"


def _compared(new_val: float, new_served: float | None, champion: dict[str, Any]) -> tuple[bool, float, float | None]:
    """Whether the new version and the champion are compared as served (with the TTA mode chosen on val: when both
    versions record it; else the single pass), and both figures; the champion's is None without a tag."""
    champ_served = _number(champion.get("val_accuracy_served"))
    if new_served is not None and champ_served is not None:
        return True, float(new_served), champ_served
    return False, new_val, _number(champion.get("val_accuracy"))


def _number(tag: Any) -> float | None:
    """A numeric tag's value, or None when it is absent or no number."""
    try:
        return None if tag is None else float(tag)
    except (TypeError, ValueError):
        return None


def _served_tag(version: Any, fallback: float | None) -> float | None:
    """The version's `val_accuracy_served` tag (what it was registered with), else `fallback` (today's figure)."""
    tag = _number((getattr(version, "tags", None) or {}).get("val_accuracy_served"))
    return tag if tag is not None else fallback


def _not_comparable(champion_version: str, validated_on: str, new_version: str) -> tuple[bool, str]:
    """champion_decision's answer when the champion's val accuracy was measured on other rows: no automatic move."""
    return False, (f"champion v{champion_version} was validated on {validated_on}: accuracies are not comparable; "
                   f"promote deliberately with `ferops promote --version {new_version}` if it should win")


def _client():
    """An MlflowClient on the project's store (MLFLOW_TRACKING_URI or sqlite:///<repo>/mlflow.db)."""
    import mlflow
    from mlflow import MlflowClient

    from ferops.tracking import tracking_uri

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_HELD: set[tuple[Path, int]] = set()  # registry locks held here, by thread: a nested take must not wait on itself


@contextlib.contextmanager
def aliases_locked(uri: str | None) -> Iterator[None]:
    """One register or promote at a time on a local sqlite registry (a lock file beside it, `<db>.registry.lock`):
    each reads the champion, compares, then moves aliases, and two at once (`dvc queue start -j 2`, a promote while
    register runs) could leave @champion on the version that lost the comparison. A server or `file:` store (other
    machines too) is not locked: run one at a time there. Nothing without fcntl (Windows)."""
    from ferops.config import sqlite_file

    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]  # the module, or None where there is none
    db = sqlite_file(uri) if uri else None
    held = None if db is None else (db.resolve(), threading.get_ident())
    if fcntl is None or held is None or not held[0].parent.is_dir() or held in _HELD:
        yield
        return
    path = held[0].with_name(held[0].name + ".registry.lock")
    with open(path, "a") as fh:  # the lock goes when the file closes
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another register or promote on %s to finish (%s)", held[0], path.name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        _HELD.add(held)
        try:
            yield
        finally:
            _HELD.discard(held)


def _existing_store_client():
    """`_client()` for the CLI, which only reads or moves aliases: RegistryError when the sqlite store does not exist
    (opening it would leave an empty mlflow.db in whatever folder the command ran from)."""
    from ferops.inference import store_missing_error
    from ferops.tracking import store_missing, tracking_uri

    uri = tracking_uri()
    if store_missing(uri):
        raise RegistryError(store_missing_error(uri, REGISTER_FIX))
    return _client()


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    """The model version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_for_run(client: Any, name: str, run_id: str,
                    require: Mapping[str, str | Callable[[str | None], bool]] | None = None) -> Any | None:
    """An existing version of `name` made from `run_id` (so re-running register creates no duplicate); with
    `require`, only one whose tags hold each of those values, or whose tag a given predicate accepts (a version
    registered before a tag was recorded does not count)."""
    from mlflow.exceptions import MlflowException

    from ferops.tracking import model_versions

    try:
        versions = model_versions(client, name)
    except MlflowException:
        return None
    def holds(tags: dict[str, str], key: str, want: str | Callable[[str | None], bool]) -> bool:
        return want(tags.get(key)) if callable(want) else tags.get(key) == want

    mine = [v for v in versions if (v.run_id == run_id or (v.tags or {}).get("run_id") == run_id)
            and all(holds(v.tags or {}, k, want) for k, want in (require or {}).items())]
    return min(mine, key=lambda v: int(v.version)) if mine else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _test_metrics(metrics: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The evaluate stage's numbers for one deep model (keys `name` or `deep/name`)."""
    return metrics.get(model) or metrics.get(f"deep/{model}") or {}


def register_best(models_dir: str | Path, eval_metrics: dict[str, Any], ingest_report: dict[str, Any],
                  cfg: dict[str, Any], split_dir: str | Path | None = None,
                  split_report: dict[str, Any] | None = None, experiment: str | None = None,
                  serving: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Register the best `cfg.family` model by validation accuracy, set challenger/champion aliases, report it.
    `experiment`: the DVC experiment running the stage, if any (`champion_decision`). `serving`: evaluate's
    reports/serving.json (`read_serving`), the TTA mode and temperatures to serve (the stage always passes it; a
    model it lacks, or another run's entry, is an error); without it, the training run's `eval_*` tags.

    `split_dir` (data/processed/split): its val.npz's digest is tagged, so a champion validated on another val split
    (the same raw file, split otherwise) is not compared by accuracy; `split_report` (reports/split.json) describes
    the split in the model card."""
    from ferops.tracking import tracking_uri

    with aliases_locked(tracking_uri()):  # the store `_client()` opens
        return _register_best(models_dir, eval_metrics, ingest_report, cfg, split_dir, split_report, experiment,
                              serving)


def _register_best(models_dir: str | Path, eval_metrics: dict[str, Any], ingest_report: dict[str, Any],
                   cfg: dict[str, Any], split_dir: str | Path | None, split_report: dict[str, Any] | None,
                   experiment: str | None, serving: Mapping[str, Any] | None) -> dict[str, Any]:
    import mlflow
    from mlflow.exceptions import MlflowException

    from ferops.codebase import served_code_fingerprint
    from ferops.config import registry_challenger, registry_names
    from ferops.tracking import RUN_ID_FILE, dataset_tags, find_run, git_commit, reopen_run

    name, champion_alias = registry_names({"register": cfg})
    family = str(cfg.get("family", "resnet"))
    challenger_alias = registry_challenger({"register": cfg})
    _check_register_aliases(champion_alias, challenger_alias)

    from ferops import evaluation

    cands = find_candidates(models_dir, family, scored=eval_metrics)
    best = cands[0]
    log.info("candidates (%s) by val accuracy as served (single pass): %s", family, ", ".join(
        f"{e.name} {evaluation.served_val(_ranking_row(e, eval_metrics)):.4f} ({float(e.metrics['val_accuracy']):.4f})"
        for e in cands))
    run_id = reopen_run(best.path)
    client = _client()
    run = find_run(run_id, client)  # only a missing run; a locked or unreachable store is no reason to retrain
    if run is None:
        raise DataError(f"{best.path / RUN_ID_FILE}: run {run_id} is not in the MLflow store "
                        f"{mlflow.get_tracking_uri()} — the store was reset; retrain with "
                        f"`dvc repro -f -s train_deep@{best.name}` (-s: that stage alone, not everything before it).")
    val = float(best.metrics["val_accuracy"])
    test = _test_metrics(eval_metrics, best.name)
    served_val = test.get("val_accuracy_tta")  # with the TTA mode served (evaluate's choice on val)
    data = _trained_on(run, dataset_tags(ingest_report), split_dir)

    from ferops.inference import first_line, log_pyfunc_model, recorded_tta

    # The mode evaluate chose on val becomes what a request's `tta: auto` uses, and the temperatures it fitted on val
    # calibrate each mode's probabilities. A version of this run is reused only if it serves both (temperatures within
    # TEMPERATURE_RTOL): one from before they were recorded, or with others (evaluate.tta changed), gets a fresh
    # version — its pyfunc holds them, and the test figures are the new mode's. From reports/serving.json, a DVC dep:
    # the run's tags are shared with every experiment that re-evaluates the same cached run, and the last one wins.
    if serving is not None:
        evaluated = _evaluate_served(serving, best.name, run_id)
        tta, temperatures = evaluated["tta"], evaluated["temperatures"]
        chosen_on_val = evaluated["tta_chosen"] == "val"
    else:  # a caller without evaluate's file (benchmarks, the library): the run's tags
        tta = recorded_tta({"tta": run.data.tags.get("eval_tta")})
        temperatures = _recorded_temperatures(run.data.tags.get("eval_temperatures"))
        chosen_on_val = run.data.tags.get("eval_tta_chosen", "val") == "val"
    served = {"tta_mode": tta, "temperatures": json.dumps(temperatures, sort_keys=True)}
    def calibrated_alike(tag: str | None) -> bool:
        return tag is not None and same_temperatures(_recorded_temperatures(tag), temperatures)

    # The version ships a copy of ferops' serving code (the pyfunc's code_paths): it is reused only while that code
    # is unchanged, else a fix to inference.py or pyfunc_code.py never reached the served model.
    code = served_code_fingerprint()
    mv = version_for_run(client, name, run_id, require={"tta_mode": tta, "temperatures": calibrated_alike,
                                                         "code_sha256": code})
    if mv is None and (older := version_for_run(client, name, run_id, require={"tta_mode": tta})) is not None:
        log.info("%s v%s holds run %s with other serving code or calibration: registering it again with today's",
                 name, older.version, run_id)
    reused = mv is not None
    # compared when it was first registered: a new version of it for new serving code must not undo a rollback
    compared_before = reused or version_for_run(client, name, run_id) is not None
    if mv is not None:
        # the card states what the version serves: its own temperatures, within TEMPERATURE_RTOL of today's
        temperatures = _recorded_temperatures((mv.tags or {}).get("temperatures"))
        log.info("%s v%s already holds run %s (%s) with TTA %s: reusing it, no new version", name, mv.version, run_id,
                 best.name, tta)
        if served_val is not None and "val_accuracy_served" not in (mv.tags or {}):  # registered before the tag
            client.set_model_version_tag(name, str(mv.version), "val_accuracy_served", f"{float(served_val):.6f}")
            mv = client.get_model_version(name, str(mv.version))
    else:
        if run.info.lifecycle_stage == "deleted":  # else MLflow's "cannot start run ... in the deleted state"
            raise DataError(f"{best.path / RUN_ID_FILE}: run {run_id} ({best.name}) was deleted in MLflow, so its "
                            f"model cannot be logged to it — restore it (`mlflow runs restore --run-id {run_id}`, "
                            f"or the UI's deleted runs) and re-run register, or retrain with "
                            f"`dvc repro -f -s train_deep@{best.name}`.")
        try:
            with mlflow.start_run(run_id=run_id):
                uri = log_pyfunc_model(best.path / "model.keras", tta=tta, temperatures=temperatures)
        finally:
            # MLflow logs a model only into an active run, and reopening the finished training run made its end time
            # now (the UI showed the training lasting until this registration), or FAILED when logging failed: its
            # own status and end time go back either way.
            try:
                client.set_terminated(run_id, status=run.info.status, end_time=run.info.end_time)
            except MlflowException as exc:  # never in place of the error that logging raised
                log.warning("run %s: could not put back its status and end time (%s)", run_id, first_line(str(exc)))
        tags = {
            "model": best.name, "arch": family, "run_id": run_id, "source_model_dir": str(best.path),
            "val_accuracy": f"{val:.6f}", "val_macro_f1": str(best.metrics.get("val_macro_f1", "")),
            **({"val_accuracy_served": f"{float(served_val):.6f}"} if served_val is not None else {}),
            "test_accuracy": str(test.get("test_accuracy", "unknown")),
            "test_accuracy_tta": str(test.get("test_accuracy_tta", "unknown")), **served, "code_sha256": code,
            **data, "git_commit": run.data.tags.get("git_commit") or git_commit(),
            "params": json.dumps(best.config, sort_keys=True, default=str)[:PARAMS_TAG_MAX],
        }
        mv = mlflow.register_model(uri, name, tags=tags)
        log.info("registered %s v%s from %s (run %s)", name, mv.version, best.name, run_id)
    version = str(mv.version)
    card = _describe(client, name, version, best, test, ingest_report, tta, run.data.tags.get("git_commit") or git_commit(),
                     split_report, tta_chosen=chosen_on_val,
                     temperatures=temperatures, code=(mv.tags or {}).get("code_sha256") or code)

    client.set_registered_model_alias(name, challenger_alias, version)
    current = alias_version(client, name, champion_alias)
    champ = None if current is None else {"version": current.version, **(current.tags or {})}
    promote, reason = champion_decision(version, val, data, champ, new_run_id=run_id, reused=reused,
                                        experiment=experiment, compared_before=compared_before,
                                        new_served=_served_tag(mv, served_val), new_tta=tta)
    if promote and (current is None or str(current.version) != version):
        client.set_registered_model_alias(name, champion_alias, version)
        for k, v in {"promoted_by": REGISTER_STAGE, "promotion_reason": reason, "promoted_at": _now(),
                     f"previous_{champion_alias}_version": "none" if current is None else str(current.version)}.items():
            client.set_model_version_tag(name, version, k, v)
        log_promotion(client, name, champion_alias, None if current is None else str(current.version), version,
                      REGISTER_STAGE, reason)
        log.info("%s v%s is the new @%s: %s", name, version, champion_alias, reason)
    elif promote:
        log.info("%s v%s stays @%s: %s", name, version, champion_alias, reason)
    else:
        log.warning("%s v%s is @%s only; @%s stays v%s: %s", name, version, challenger_alias, champion_alias,
                    current.version if current else "?", reason)
    registered = client.get_model_version(name, version)
    aliases = sorted(registered.aliases)
    champion_now = alias_version(client, name, champion_alias)
    return {
        "name": name, "version": int(version), "model": best.name, "run_id": run_id, "aliases": aliases,
        "decision": champion_alias if promote else challenger_alias, "reason": reason,
        "reused_existing_version": reused, "champion_version": int(champion_now.version) if champion_now else None,
        "val_accuracy": round(val, 6), "val_accuracy_served": served_val, "test_accuracy": test.get("test_accuracy"),
        "test_accuracy_tta": test.get("test_accuracy_tta"),
        "tta_mode": (registered.tags or {}).get("tta_mode", "none"),  # what a request's `tta: auto` uses
        "model_card": card,  # the stage writes it to reports/model_card.md
    }


SERVING_FIX = "re-run evaluate to write it anew: `dvc repro -f -s evaluate` (-s: that stage alone), then register"


def check_serving_entry(entry: Any, where: str) -> dict[str, Any]:
    """One deep model's entry of evaluate's serving file (`evaluation.serving_summary`), checked by the rules a served
    model_config is read with (`inference.recorded_tta`, `recorded_temperatures`), but strictly: {"tta": mode,
    "tta_chosen": "val" | "params", "temperatures": {mode: T}, "run_id": the training run scored}; DataError naming
    `where` otherwise."""
    from ferops.constants import TTA_VIEW_MODES
    from ferops.inference import recorded_tta, recorded_temperatures

    def bad(why: str) -> DataError:
        return DataError(f"{where}: {why} — {SERVING_FIX}.")

    if not isinstance(entry, dict):
        raise bad(f"{entry!r} is not an object with tta, tta_chosen, temperatures and run_id")
    tta, chosen, temps, run_id = (entry.get(k) for k in ("tta", "tta_chosen", "temperatures", "run_id"))
    if not isinstance(tta, str) or recorded_tta({"tta": tta}) != tta:
        raise bad(f"tta {tta!r} is not one of {', '.join(TTA_VIEW_MODES)}")
    if chosen not in ("val", "params"):
        raise bad(f"tta_chosen {chosen!r} is not val or params")
    if not isinstance(temps, dict):
        raise bad(f"temperatures {temps!r} is not an object (TTA mode: temperature)")
    kept = recorded_temperatures({"temperature": temps})
    for mode, t in temps.items():
        if isinstance(t, bool) or kept.get(mode) != t:
            raise bad(f"temperature {mode!r}: {t!r} is not a TTA mode's number between 0.001 and 1000")
    if run_id is not None and not isinstance(run_id, str):
        raise bad(f"run_id {run_id!r} is not an MLflow run id")
    return {"tta": tta, "tta_chosen": chosen, "temperatures": kept, "run_id": run_id}


def read_serving(path: str | Path) -> dict[str, dict[str, Any]]:
    """evaluate's reports/serving.json, every entry checked (`check_serving_entry`); a DataError naming the file otherwise."""
    from ferops.data.io import read_json

    try:
        raw = read_json(path)
    except ValueError as exc:
        raise DataError(f"{path}: not JSON ({exc}) — {SERVING_FIX}.") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not an object of deep model → TTA mode and temperatures — {SERVING_FIX}.")
    return {str(k): check_serving_entry(v, f"{path}: {k}") for k, v in raw.items()}


def _evaluate_served(serving: Mapping[str, Any], model: str, run_id: str) -> dict[str, Any]:
    """`model`'s entry of evaluate's serving file (keys as metrics.json's: `name`, or `deep/name` beside a baseline of
    that name), checked and of training run `run_id`. The file is a DVC dep, so under `dvc repro` it always holds the
    model just evaluated; a missing or other run's entry means evaluate has not scored this model (a stage run by hand,
    `mlflow run -e train_deep`), and its run's tags may be an experiment's: refused, not guessed."""
    where = f"serving.json: {model}"
    key = next((k for k in (model, f"deep/{model}") if k in serving), None)
    if key is None:
        raise DataError(f"{where}: no entry — evaluate has not scored this model; {SERVING_FIX}.")
    entry = check_serving_entry(serving[key], where)
    if entry["run_id"] is not None and entry["run_id"] != run_id:
        raise DataError(f"{where}: evaluate scored MLflow run {entry['run_id']}, but the model now in its folder is run "
                        f"{run_id} (trained since); {SERVING_FIX}.")
    return entry


def _recorded_temperatures(tag: str | None) -> dict[str, float]:
    """evaluate's `eval_temperatures` tag (JSON: TTA mode → temperature) as served; {} when absent or unreadable."""
    from ferops.inference import recorded_temperatures

    try:
        temps = json.loads(tag) if tag else {}
    except ValueError:
        return {}
    return recorded_temperatures({"temperature": temps})


def same_temperatures(a: Mapping[str, float], b: Mapping[str, float], rtol: float = TEMPERATURE_RTOL) -> bool:
    """The same TTA modes calibrated, each temperature within `rtol` (relative) of the other's."""
    return a.keys() == b.keys() and all(abs(a[m] - b[m]) <= rtol * max(a[m], b[m]) for m in a)


def _check_register_aliases(champion: str, challenger: str) -> None:
    """ConfigError before anything is registered when register.champion_alias / challenger_alias cannot work: the same
    name (every new version would take @champion as its challenger alias, a worse one too), or one MLflow refuses
    (`latest`, `v<N>`, a space: setting it fails after the version was registered)."""
    from ferops.errors import ConfigError

    for key, alias in (("champion_alias", champion), ("challenger_alias", challenger)):
        if not re.fullmatch(r"[\w-]{1,255}", alias):  # MLflow's own rule, else it fails after registering
            raise ConfigError(f"register.{key}: {alias!r} is not an alias MLflow accepts — letters, digits, _ and - "
                              "only (e.g. champion, prod-2026).")
        if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise ConfigError(f"register.{key}: {alias!r} is reserved by MLflow (`latest` and `v<number>` name "
                              "versions) — use a name like champion or challenger.")
    if champion == challenger:
        raise ConfigError(f"register.champion_alias and register.challenger_alias are both {champion!r}: every new "
                          "version would take the served alias, a worse one too — give them different names.")


def _trained_on(run: Any, current: dict[str, str], split_dir: str | Path | None) -> dict[str, str]:
    """The data tags a version of `run` carries: the current ingest's (and val split's digest), or — when the run
    was trained on another data file (trained outside DVC, or the data changed since) — the run's own, without a
    val digest: a version is never tagged with data it did not see, so it is not compared with a champion on them."""
    trained = run.data.tags.get("data_sha256")
    if trained not in (None, current["data_sha256"]):
        log.warning("run %s was trained on data %s but reports/ingest.json says %s: the version is tagged with the "
                    "run's data, so it is not compared with a champion validated on other data; retrain on the "
                    "current data with `dvc repro -f -s train_deep@<model>`", run.info.run_id, str(trained)[:12],
                    current["data_sha256"][:12])
        return {k: run.data.tags.get(k, "unknown") for k in current}
    if split_dir is None:
        return dict(current)
    from ferops.data.io import data_digest, load_npz

    return {**current, "val_digest": data_digest(load_npz(Path(split_dir) / "val.npz"))}


def _describe(client: Any, name: str, version: str, best: Any, test: dict[str, Any], ingest_report: dict[str, Any],
              tta: str, commit: str | None, split_report: dict[str, Any] | None = None, tta_chosen: bool = True,
              temperatures: dict[str, float] | None = None, code: str | None = None) -> str:
    """Set the version's model card as its registry description (and the model's, when it has none); return it."""
    from ferops.modelcard import model_card

    card = model_card(name=name, version=version, model=best.name, config=best.config, metrics=best.metrics,
                      test=test, ingest=ingest_report, tta=tta, git_commit=commit, split=split_report,
                      tta_chosen=tta_chosen, temperatures=temperatures, code=code)
    client.update_model_version(name, version, description=card)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=(
            "Facial-expression classifier for 48×48 grey faces (FER2013's 7 classes), registered by ferops' register "
            "stage. `@champion` is the served model; each version's description is its model card."))
    return card


# ---- CLI: `ferops registry`, `ferops promote` -------------------------------------------------------------

def _names(args: Any, params: dict[str, Any] | None = None) -> tuple[str, str]:
    """(--name, else register.model_name; register.champion_alias) from the params file (`params`, when already
    read): the alias `--card` and `promote` default to is the one `ferops serve` and `predict` follow."""
    from ferops.config import project_params, registry_names

    name, champion = registry_names(project_params(getattr(args, "params", None)) if params is None else params)
    return (str(args.name) if getattr(args, "name", None) else name), champion


def _registered(client: Any, name: str) -> Any:
    """The registered model, or a RegistryError listing the names that exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models()]
        raise RegistryError(f"no registered model named {name!r} in {mlflow.get_registry_uri()}; "
                            + (f"known: {', '.join(known)}." if known else
                               f"the registry is empty — {REGISTER_FIX}.")) from None


def _version(client: Any, name: str, version: str) -> Any:
    """One model version, or a RegistryError listing the versions that exist."""
    from mlflow.exceptions import MlflowException

    from ferops.tracking import model_versions

    try:
        int(version)
        return client.get_model_version(name, str(version))
    except (MlflowException, ValueError):
        have = sorted(int(v.version) for v in model_versions(client, name))
        raise RegistryError(f"{name!r} has no version {version!r}; versions: {', '.join(map(str, have)) or 'none'} "
                            f"(see `ferops registry`).") from None


def registry_rows(client: Any, name: str) -> list[dict[str, Any]]:
    """One dict per version of `name` (newest first) with its aliases and key tags."""
    from ferops.tracking import model_versions

    rm = _registered(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():  # search results carry no aliases (mlflow#16734)
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for v in sorted(model_versions(client, name), key=lambda v: -int(v.version)):
        t = v.tags or {}
        rows.append({"version": int(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
                     "model": t.get("model", ""), "val_accuracy": t.get("val_accuracy"),
                     "val_accuracy_served": t.get("val_accuracy_served"),
                     "test_accuracy": t.get("test_accuracy"), "test_accuracy_tta": t.get("test_accuracy_tta"),
                     "tta_mode": t.get("tta_mode", ""), "dataset": t.get("dataset", ""),
                     "created": datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "run_id": v.run_id or t.get("run_id", "")})
    return rows


def _pct(v: Any) -> str:
    try:
        return f"{100 * float(v):.2f}"
    except (TypeError, ValueError):
        return "–"


def format_registry(name: str, rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of versions: aliases, val accuracy (%; with the TTA mode served in brackets, where
    recorded), test accuracy, test accuracy with the TTA mode recorded for `tta: auto`, dataset, created (UTC), run
    id."""
    head = ["version", "aliases", "model", "val acc (TTA)", "test acc", "test TTA (mode)", "data", "created (UTC)",
            "run id"]
    served = any(r.get("val_accuracy_served") for r in rows)  # else the column shows the single pass alone
    body = [[str(r["version"]), ",".join(r["aliases"]) or "-", r["model"],
             _pct(r["val_accuracy"]) + (f" ({_pct(r.get('val_accuracy_served'))})" if served else ""),
             _pct(r["test_accuracy"]), f"{_pct(r['test_accuracy_tta'])} ({r['tta_mode'] or '?'})", r["dataset"],
             r["created"], r["run_id"]] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    right = ("version", "val acc (TTA)", "test acc", "test TTA (mode)")
    fmt = "  ".join(f"{{:{'>' if h in right else '<'}{w}}}" for h, w in zip(head, widths))
    lines = [f"{name}: {len(rows)} version(s)", fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(ln.rstrip() for ln in lines)


def cli_registry(args: Any) -> None:
    """`ferops registry`: print the versions of the registered model with aliases and accuracies, and the latest
    alias moves of its promotion log."""
    client = _existing_store_client()
    name, champion = _names(args)
    if getattr(args, "card", None) is not None:  # `--card` alone: "" → the champion alias
        print(model_card_of(client, name, str(args.card) or champion))
        return
    print(format_registry(name, registry_rows(client, name)))
    moves = ((client.get_registered_model(name).tags or {}).get(PROMOTION_LOG) or "").splitlines()
    if moves:
        print(f"\nalias moves (latest {min(5, len(moves))} of {len(moves)}; all in the `{PROMOTION_LOG}` tag):")
        print("\n".join(f"  {m}" for m in moves[-5:]))


def model_card_of(client: Any, name: str, ref: str) -> str:
    """The model card (description) of version `ref` (a number) or of the version alias `ref` points at."""
    _registered(client, name)
    number = ref[1:] if ref[:1] in "vV" and ref[1:].isdigit() else ref  # `v3` is a version: MLflow reserves it as an alias
    mv = _version(client, name, number) if number.isdigit() else alias_version(client, name, ref)
    if mv is None:
        aliases = sorted(client.get_registered_model(name).aliases or {})
        raise RegistryError(f"{name!r} has no alias {ref!r}; aliases: {', '.join(aliases) or 'none'} "
                            f"(or give a version number; see `ferops registry`).")
    if not mv.description:
        raise RegistryError(f"{name} v{mv.version} has no model card: it was registered before ferops wrote them "
                            f"(`dvc repro -f -s register` writes one for the best model's version).")
    return str(mv.description).rstrip("\n")


def _check_alias(alias: str, model: Any, known: Sequence[str] | None = None) -> None:
    """RegistryError before MLflow misreads `alias`: it resolves `latest` to the newest version and `v<N>` to version
    N (so "already points at" would be reported, and nothing set); and an alias that differs from one the model has
    only in case is a typo that would create a second alias beside it. With `known` (the project's champion and
    challenger aliases), an alias that is neither one of them nor one the model has is refused too: a typo
    (`champoin`) would create it, report success and leave @champion where it was."""
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegistryError(f"--alias {alias!r}: reserved by MLflow (`latest` and `v<number>` name versions). "
                            "Use a name like champion or challenger.")
    have = model.aliases or {}
    twin = sorted(a for a in have if a != alias and a.lower() == alias.lower())
    if twin:
        raise RegistryError(f"--alias {alias!r}: {model.name} has @{twin[0]}, and aliases are case-sensitive — "
                            f"did you mean --alias {twin[0]}?")
    names = sorted({*have, *(known or ())})
    if known is not None and alias not in names:
        close = difflib.get_close_matches(alias, names, n=1)
        hint = f"did you mean --alias {close[0]}? " if close else ""
        listed = ", ".join(f"@{a}" + (f" (v{have[a]})" if a in have else "") for a in names)
        raise RegistryError(f"--alias {alias!r}: {model.name} has no such alias ({listed}); {hint}"
                            f"to create @{alias}, add --new-alias.")


def promote(client: Any, name: str, version: str, alias: str = "champion", reason: str = "manual promotion",
            by: str | None = None, champion_alias: str = "champion",
            known_aliases: Sequence[str] | None = None) -> dict[str, Any]:
    """Point `alias` at `version` deliberately, recording who, why, when and the previous holder in version tags.

    Moving `champion_alias` writes `promoted_by`, `promotion_reason`, `promoted_at` (the register stage reads them:
    who put @champion there); another alias writes them prefixed with its name (`challenger_promoted_by`, ...), so
    marking the champion's version @staging does not make @champion look placed by a person. `known_aliases`: only
    those and the model's own aliases may be moved (`_check_alias`); None creates any alias asked for."""
    import mlflow

    with aliases_locked(getattr(client, "_registry_uri", None) or mlflow.get_registry_uri()):
        return _promote(client, name, version, alias, reason, by, champion_alias, known_aliases)


def _promote(client: Any, name: str, version: str, alias: str, reason: str, by: str | None, champion_alias: str,
             known_aliases: Sequence[str] | None) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    _check_alias(alias, _registered(client, name), known_aliases)
    target = _version(client, name, str(version))
    previous = alias_version(client, name, alias)
    prev = None if previous is None else str(previous.version)
    change = {"name": name, "alias": alias, "version": str(target.version), "previous_version": prev,
              "changed": prev != str(target.version)}
    if not change["changed"]:
        return change
    try:
        client.set_registered_model_alias(name, alias, str(target.version))
    except MlflowException as exc:  # a malformed or reserved alias name (`v3`, `latest`)
        raise RegistryError(f"--alias {alias!r}: {exc.message} Use a name like champion or challenger.") from None
    who = by or os.environ.get("USER") or getpass.getuser()
    key = "" if alias == champion_alias else f"{alias}_"
    tags = {f"{key}promoted_by": who, f"{key}promotion_reason": reason, f"{key}promoted_at": _now(),
            f"previous_{alias}_version": prev or "none"}
    for k, v in tags.items():
        client.set_model_version_tag(name, str(target.version), k, v)
    log_promotion(client, name, alias, prev, str(target.version), who, reason)
    # the figures the register stage compares: val as served (with the TTA mode) where both versions record it
    now, before = target.tags or {}, (previous.tags or {}) if previous is not None else {}
    served = now.get("val_accuracy_served") is not None and (previous is None or before.get("val_accuracy_served") is not None)
    key = "val_accuracy_served" if served else "val_accuracy"
    change["val_label"] = "val with TTA" if served else "val"
    change["val_accuracy"] = now.get(key)
    change["previous_val_accuracy"] = None if previous is None else before.get(key)
    return change


PROMOTION_LOG = "promotion_log"  # registered-model tag: every alias move, newest last (version tags keep the latest)


def log_promotion(client: Any, name: str, alias: str, previous: str | None, version: str, by: str,
                  reason: str) -> None:
    """Append one line to the registered model's promotion log, dropping the oldest lines past the tag size limit:
    the version tags say who moved an alias there last; the log keeps every move, rollbacks included."""
    model = client.get_registered_model(name)
    lines = ((model.tags or {}).get(PROMOTION_LOG) or "").splitlines()
    lines.append(f"{_now()} @{alias} v{previous or '-'} -> v{version} by {by}: {reason}"[:500])
    while len("\n".join(lines)) > PARAMS_TAG_MAX:
        lines.pop(0)
    client.set_registered_model_tag(name, PROMOTION_LOG, "\n".join(lines))


def cli_promote(args: Any) -> None:
    """`ferops promote --version N [--alias champion] [--reason ...]`: move an alias on purpose and say what changed."""
    from ferops.config import project_params, registry_challenger

    client = _existing_store_client()
    params = project_params(getattr(args, "params", None))
    name, champion = _names(args, params)
    challenger = registry_challenger(params)
    c = promote(client, name, str(args.version), alias=getattr(args, "alias", None) or champion, reason=args.reason,
                champion_alias=champion,
                known_aliases=None if getattr(args, "new_alias", False) else (champion, challenger))
    if not c["changed"]:
        print(f"{name}: @{c['alias']} already points at v{c['version']} — nothing changed.")
        return
    val = c.get("val_label", "val")
    before = f"v{c['previous_version']} ({val} {_pct(c['previous_val_accuracy'])}%)" if c["previous_version"] else "nobody"
    print(f"{name}: @{c['alias']} moved from {before} to v{c['version']} ({val} {_pct(c['val_accuracy'])}%); "
          f"reason: {args.reason}. Load it as models:/{name}@{c['alias']}; a running `ferops serve` keeps the "
          f"version it loaded until restarted.")
    lower = False
    try:
        lower = float(c["val_accuracy"]) < float(c["previous_val_accuracy"])
    except (TypeError, ValueError):
        pass
    if c["previous_version"]:
        alias = "" if c["alias"] == champion else f" --alias {c['alias']}"  # promote's default: champion_alias
        # the same model: without the --name / --params given here, the undo would move an alias of the default model
        same = "".join(f" --{opt} {shlex.quote(str(value))}" for opt in ("name", "params")
                       if (value := getattr(args, opt, None)))
        note = (f"v{c['version']} has a lower validation accuracy than v{c['previous_version']}; " if lower else "")
        print(f"note: {note}undo with `ferops promote --version {c['previous_version']}{alias}{same}`.")
