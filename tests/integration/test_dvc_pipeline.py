"""The whole shrunk pipeline through training, tuning, evaluation and registration, for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_repo import dvc, make_repo, ran_stages

pytestmark = pytest.mark.integration


def test_full_pipeline_end_to_end_then_noop(tmp_path):
    repo = make_repo(tmp_path / "repo")
    first = dvc(repo, "repro", timeout=1200)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert {"naive_bayes", "cnn", "resnet"} <= set(metrics)
    for m in metrics.values():
        assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["val_accuracy"] <= 1.0 and 0.0 <= m["test_ece"] <= 1.0
    figures = ["model_comparison.png"] + [f"{m}/{f}" for m in metrics
                                          for f in ("confusion_test.png", "calibration_test.png", "mistakes_val.png")]
    assert (repo / "reports/mistakes/resnet/mistakes_val.csv").read_text().startswith("actual,predicted,source_id")
    assert not list((repo / "reports/evaluation").rglob("mistakes_val.csv"))  # DVC drew it as a confusion matrix
    assert all((repo / "reports/evaluation" / f).stat().st_size > 1000 for f in figures)
    assert "resnet" in (repo / "reports/model_comparison.md").read_text()
    assert (repo / "reports/submission.csv").read_text().startswith("id,emotion")
    tuning = json.loads((repo / "reports/tuning/resnet.json").read_text())
    assert tuning["n_trials"] >= 1 and "best_params" in tuning
    reg = json.loads((repo / "reports/register.json").read_text())
    assert reg["name"] == "fer2013-resnet" and "champion" in reg["aliases"] and "model_card" not in reg
    card = (repo / "reports/model_card.md").read_text()
    assert card.startswith(f"# fer2013-resnet v{reg['version']}") and "**Synthetic demo faces**" in card

    import mlflow

    store = f"sqlite:///{repo / 'mlflow.db'}"  # a client of its own: MLflow's global URIs stay as other tests set them
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("ferops").experiment_id],
                              filter_string="tags.dataset = 'synthetic'")
    assert {"train_baselines", "train_deep", "tune"} <= {r.data.tags.get("stage") for r in runs}
    assert {r.data.tags.get("tuned_from") for r in runs if r.data.tags.get("stage") == "train_deep"} == {
        "params.yaml"}  # use_tuned: false
    # the champion carries the TTA mode evaluate chose on val for it (reports/serving.json, also tagged on its run),
    # which `tta: auto` requests then use
    serving = json.loads((repo / "reports/serving.json").read_text())[reg["model"]]
    chosen = serving["tta"]
    assert chosen in ("none", "flip", "tencrop", "shift") and reg["tta_mode"] == chosen
    assert serving["run_id"] == reg["run_id"] and client.get_run(reg["run_id"]).data.tags["eval_tta"] == chosen
    assert client.get_model_version(reg["name"], str(reg["version"])).tags["tta_mode"] == chosen

    second = dvc(repo, "repro")
    assert second.returncode == 0
    assert "Running stage" not in second.stdout, second.stdout

    # An experiment is a trial: `dvc exp run` serving the champion's own model in another TTA mode registers it
    # again, and outside an experiment that new version would take @champion; in one it stays @challenger. Only
    # evaluate and register re-run (their outputs are all uncached reports), so putting those, params.yaml and
    # dvc.lock back leaves the workspace as it was for the steps below.
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(repo / "reports", kept / "reports")
    for f in ("params.yaml", "dvc.lock"):
        shutil.copy2(repo / f, kept / f)
    other = "flip" if chosen != "flip" else "none"
    exp = dvc(repo, "exp", "run", "-n", "tta-trial", "-S", f"evaluate.tta={other}")
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    ran = ran_stages(exp.stdout)
    assert ran == {"evaluate", "register"}, ran
    assert "in DVC experiment 'tta-trial': an experiment does not move @champion" in exp.stdout, exp.stdout[-3000:]
    trial = json.loads((repo / "reports/register.json").read_text())
    assert trial["run_id"] == reg["run_id"] and trial["version"] > reg["version"] and trial["tta_mode"] == other
    assert "champion" not in trial["aliases"]
    assert str(client.get_model_version_by_alias(reg["name"], "champion").version) == str(reg["version"])
    shutil.rmtree(repo / "reports")
    shutil.copytree(kept / "reports", repo / "reports")
    for f in ("params.yaml", "dvc.lock"):
        shutil.copy2(kept / f, repo / f)
    assert dvc(repo, "status").stdout.strip() == "Data and pipelines are up to date."

    # Re-tuning re-trains nothing while train_deep.use_tuned is false: train_deep@<m> depends on tune_select's
    # one-file selection for <m>, which comes out unchanged (it used to depend on all of reports/tuning).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tune"]["families"]["resnet"]["space"]["lr"]["high"] = 4.0e-3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = dvc(repo, "repro")
    ran = [ln for ln in third.stdout.splitlines() if ln.startswith("Running stage")]
    assert third.returncode == 0 and "Running stage 'tune@resnet':" in ran, third.stdout[-3000:]
    assert not [ln for ln in ran if "train_deep" in ln or "evaluate" in ln], ran
    assert json.loads((repo / "reports/tuned/resnet.json").read_text()) == {
        "model": "resnet", "source": None, "best_params": {}}

    # The offline augmented set feeds no model by default (train_deep.train_data is the split's): changing augment
    # re-runs augment alone. Turning use_tuned on re-trains only models with a study (resnet; cnn has none). A
    # baseline removed from params leaves its folder (DVC keeps it) but leaves the reports.
    study = json.loads((repo / "reports/tuning/resnet.json").read_text())
    params["augment"]["copies"] = 2
    params["train_deep"]["use_tuned"] = True
    params["train_deep"]["models"]["resnet"]["time_budget_min"] = 30  # a full-run setting: the study stays
    params["train_deep"]["models"]["resnet"]["lr"] = 2.5e-3  # every trial samples its own lr: the study stays too
    del params["train_baselines"]["models"]["naive_bayes"]
    params["train_baselines"]["models"]["logreg"] = {"kind": "logreg", "max_iter": 50, "grid": {"C": [0.01]}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = dvc(repo, "repro")
    ran = ran_stages(fourth.stdout)
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    assert {"augment", "train_deep@resnet", "train_baselines@logreg", "evaluate", "register"} <= ran, ran
    assert "train_deep@cnn" not in ran, ran
    # tune@resnet lists the model's params, so it re-ran — only to find its finished study: same study, no new trials
    # (neither the time budget nor the lr reaches a trial)
    again = json.loads((repo / "reports/tuning/resnet.json").read_text())
    assert "tune@resnet" in ran and again["study_name"] == study["study_name"], (again, study)
    assert (again["n_complete"], again["n_pruned"]) == (study["n_complete"], study["n_pruned"])
    assert (repo / "models/baselines/naive_bayes").is_dir()
    assert set(json.loads((repo / "reports/metrics.json").read_text())) == {"logreg", "cnn", "resnet"}

    # The stages as MLflow Project entry points (MLproject), as the README shows them: in the `ferops` experiment the
    # stage's run is the project run; without --experiment-name, one line that names the flag (not MLflow's traceback).
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", ".", "-e", "train_baselines", "-P", "model=logreg",
           "--env-manager", "local"]
    bare = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert bare.returncode != 0 and "Traceback" not in bare.stderr, bare.stderr[-3000:]
    assert "add `--experiment-name ferops` to `mlflow run`" in bare.stderr
    named = subprocess.run(cmd + ["--experiment-name", "ferops"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=600)
    assert named.returncode == 0, named.stderr[-3000:]
    run = client.get_run((repo / "models/baselines/logreg/mlflow_run_id.txt").read_text().strip())
    assert run.info.experiment_id == client.get_experiment_by_name("ferops").experiment_id
    assert run.data.tags.get("mlflow.project.entryPoint") == "train_baselines" and "val_accuracy" in run.data.metrics

    # `main` is `dvc repro`: here logreg (a new grid), evaluate and register. Each stage took the project run from
    # MLFLOW_RUN_ID, so the second one to start a run failed; now each logs its own runs as under dvc repro, and the
    # runs they start are nested under the project run.
    params["train_baselines"]["models"]["logreg"]["grid"]["C"] = [0.02]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    main = subprocess.run(cmd[:3] + ["-e", "main", "--env-manager", "local", "--experiment-name", "ferops"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=900)
    assert main.returncode == 0, main.stdout[-3000:] + main.stderr[-3000:]
    assert "Running stage 'train_baselines@logreg'" in main.stdout and "Running stage 'evaluate'" in main.stdout
    (project,) = client.search_runs([run.info.experiment_id], "tags.`mlflow.project.entryPoint` = 'main'")
    logreg = client.get_run((repo / "models/baselines/logreg/mlflow_run_id.txt").read_text().strip())
    assert logreg.info.run_id != project.info.run_id and logreg.data.params["kind"] == "logreg"
    assert logreg.data.tags["mlflow.parentRunId"] == project.info.run_id and "test_accuracy" in logreg.data.metrics
    assert "train_baselines-logreg" in project.data.tags["mlflow.note.content"]
