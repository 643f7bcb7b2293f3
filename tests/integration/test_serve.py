"""Serving the champion over REST: `ferops serve` → `mlflow models serve models:/<name>@champion --env-manager local`."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from ferops.constants import EMOTIONS, IMG_SIZE

pytestmark = pytest.mark.integration

NAME = "fer-serve-test"
PING_TIMEOUT_S = 300  # the other xdist worker may be training: a server that exits is caught at once (poll)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register_champion(tmp_path: Path) -> None:
    """A tiny ResNet as train_deep exports it (BatchNorm, a 44-px centre crop), logged as FerPyfunc with `tencrop`
    as the mode evaluate chose, registered @champion: serving folds its BatchNorm and crops as training did."""
    import keras
    import mlflow
    import yaml

    from ferops.inference import log_pyfunc_model
    from ferops.models.zoo import build_model
    from ferops.tracking import init_tracking
    from ferops.training import resolve_config

    keras.utils.set_random_seed(0)
    common = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["train_deep"]["common"]
    cfg = resolve_config(common, {"arch": "resnet", "stages": [1, 1], "widths": [8, 16], "stem_stride": 2,
                                  "stem_pool": False, "dropout": 0.0})
    model = build_model(cfg, seed=0, inference=True)
    path = tmp_path / "model.keras"
    model.save(path)
    init_tracking()
    with mlflow.start_run():
        uri = log_pyfunc_model(path, tta="tencrop")
    mv = mlflow.register_model(uri, NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", mv.version)


def _wait_for_ping(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + PING_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /ping answer within {PING_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session, with every process it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_serve_champion_over_rest(tmp_path, mlflow_store):
    import cv2

    _register_champion(tmp_path)
    port, log = _free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    # `ferops serve` (what `make serve` runs): checks the alias, then becomes `mlflow models serve` on it
    cmd = [sys.executable, "-m", "ferops.cli", "serve", "--model", f"models:/{NAME}@champion", "--port", str(port)]
    # pickle loading off, as a security-minded deployment would run it: the model is logged as code
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "TF_CPP_MIN_LOG_LEVEL": "3",
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    with open(log, "w") as out:
        # Own process group: the server's worker processes are stopped with it.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    try:
        _wait_for_ping(url, proc, log)
        assert f"models:/{NAME}@champion is version 1 (MLflow run" in log.read_text()  # and serves that version
        # A second server on the same port (`make serve` twice): one line before anything loads, not uvicorn's traceback.
        again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
        assert f"ferops serve cannot listen on 127.0.0.1:{port}: Address already in use" in again.stderr
        rng = np.random.default_rng(0)
        pixels = [" ".join(map(str, rng.integers(0, 256, IMG_SIZE * IMG_SIZE))) for _ in range(2)]
        ok, png = cv2.imencode(".png", rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
        image = base64.b64encode(png.tobytes()).decode()
        payload = {"dataframe_split": {"columns": ["pixels", "image"],
                                       "data": [[pixels[0], None], [pixels[1], None], [None, image]]}}
        r = requests.post(f"{url}/invocations", json=payload, timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == 3
        for p in preds:
            probs = [p[f"prob_{n}"] for n in EMOTIONS]
            assert abs(sum(probs) - 1.0) < 1e-4 and min(probs) >= 0
            assert p["label"] == int(np.argmax(probs)) and p["label_name"] == EMOTIONS[p["label"]]
            assert p["model"] == f"models:/{NAME}/1"  # which version answered: the one @champion named at start

        bad = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["pixels"], "data": [["1 2 3"]]}},
                            timeout=60)
        assert bad.status_code == 400 and "row 0: `pixels` expected 2304 pixel values, found 3" in bad.json()["message"]

        # test-time augmentation per request: the served probabilities are the local model's mean over the views
        from ferops.inference import load_keras, parse_pixel_strings, predict_proba

        rows = {"dataframe_split": {"columns": ["pixels"], "data": [[p] for p in pixels]}}
        flip = requests.post(f"{url}/invocations", json={**rows, "params": {"tta": "flip"}}, timeout=60)
        assert flip.status_code == 200, flip.text
        want = predict_proba(load_keras(tmp_path / "model.keras"), parse_pixel_strings(pixels), tta="flip")
        got = np.array([[p[f"prob_{n}"] for n in EMOTIONS] for p in flip.json()["predictions"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        auto = requests.post(f"{url}/invocations", json={**rows, "params": {"tta": "auto"}}, timeout=60)
        assert auto.status_code == 200, auto.text  # `auto`: the registered mode, ten-crop here
        want = predict_proba(load_keras(tmp_path / "model.keras"), parse_pixel_strings(pixels), tta="tencrop")
        got = np.array([[p[f"prob_{n}"] for n in EMOTIONS] for p in auto.json()["predictions"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        bad = requests.post(f"{url}/invocations", json={**rows, "params": {"tta": "ten-crop"}}, timeout=60)
        assert bad.status_code == 400
        assert "tta='ten-crop': use one of none, flip, tencrop, shift, auto" in bad.json()["message"]
    finally:
        _stop(proc)


def test_serve_and_dashboard_say_what_is_missing_in_one_line(tmp_path, tmp_path_factory, mlflow_store):
    (tmp_path / "params.yaml").write_text("register: {model_name: nothing-here}\ntune: {storage: null}\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    env.pop("FEROPS_OPTUNA_STORAGE", None)
    from ferops.tracking import init_tracking

    init_tracking()  # the store exists, the model does not
    serve = subprocess.run([sys.executable, "-m", "ferops.cli", "serve", "--params", str(tmp_path / "params.yaml")],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert serve.returncode != 0 and "Traceback" not in serve.stderr
    assert "no model 'nothing-here' with alias @champion" in serve.stderr
    dash = subprocess.run([sys.executable, "-m", "ferops.cli", "dashboard"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    # A params.yaml alone is not a project (as for the MLflow store); with its dvc.yaml the cure is the tune stage.
    assert dash.returncode != 0 and "Traceback" not in dash.stderr and "is not in a ferops project" in dash.stderr
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    dash = subprocess.run([sys.executable, "-m", "ferops.cli", "dashboard"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert dash.returncode != 0 and "Traceback" not in dash.stderr and "no Optuna studies yet at" in dash.stderr
    import optuna

    optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    with socket.socket() as busy:  # the port taken (a dashboard already running): one line, not a traceback
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        dash = subprocess.run([sys.executable, "-m", "ferops.cli", "dashboard", "--port", str(port)],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert dash.returncode == 2 and "Traceback" not in dash.stderr, dash.stderr
    assert f"ferops dashboard cannot listen on 127.0.0.1:{port}: Address already in use" in dash.stderr
    outside = tmp_path_factory.mktemp("elsewhere")  # no dvc.yaml or params.yaml above it: the cure is the folder
    env.pop("MLFLOW_TRACKING_URI")
    for cmd in ("serve", "dashboard"):
        r = subprocess.run([sys.executable, "-m", "ferops.cli", cmd], capture_output=True, text=True, cwd=outside,
                           env=env, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert f"{outside} is not in a ferops project — run from the project folder" in r.stderr, (cmd, r.stderr)


def test_dashboard_shows_the_tune_stages_study(tmp_path, mlflow_store):
    """`ferops dashboard` (= `make dashboard`) for real: optuna-dashboard on the project's study storage, bound to
    127.0.0.1, listing the study with its trials and the objective's name as the tune stage records them."""
    import optuna

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("tune: {storage: null}\n")  # the default: optuna.db at the project root
    from ferops.tuning import _open_study

    study = _open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "resnet-demo", seed=0,
                        pruner=optuna.pruners.NopPruner(), n_startup=2)  # opened as the tune stage opens it
    for lr in (1e-3, 2e-3):
        study.enqueue_trial({"lr": lr})
    study.optimize(lambda t: 0.5 + 100 * t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=2)
    port, log = _free_port(), tmp_path / "dashboard.log"
    env = {k: v for k, v in os.environ.items() if k != "FEROPS_OPTUNA_STORAGE"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ferops.cli", "dashboard", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline, listed = time.monotonic() + 120, None
        while listed is None and time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"ferops dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                listed = requests.get(f"http://127.0.0.1:{port}/api/studies", timeout=5)
            except requests.ConnectionError:
                time.sleep(0.3)
        assert listed is not None and listed.status_code == 200, log.read_text()[-3000:]
        (summary,) = listed.json()["study_summaries"]
        assert summary["study_name"] == "resnet-demo" and summary["directions"] == ["maximize"]
        detail = requests.get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=30).json()
        assert len(detail["trials"]) == 2 and detail["objective_names"] == ["val_accuracy"]  # not "Objective 0"
        assert [t["values"] for t in detail["best_trials"]] == [pytest.approx([0.7])]
        assert f"optuna-dashboard on sqlite:///{tmp_path / 'optuna.db'}: http://127.0.0.1:{port}" in log.read_text()
    finally:
        _stop(proc)


LOAD_WITHOUT_FEROPS = """
import sys
from pathlib import Path
sys.path = [p for p in sys.path if not (Path(p or ".") / "ferops" / "__init__.py").exists()]  # ferops not installed
import importlib.util
assert importlib.util.find_spec("ferops") is None
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"pixels": [" ".join(["128"] * 2304)]}), params={"tta": "auto"})
import ferops
print(ferops.__file__, out.shape)
"""


def test_the_registered_model_carries_its_own_ferops_code(tmp_path, mlflow_store, caplog):
    """It loads and predicts where ferops is not installed (a Docker image, another machine): the package is copied
    into the model, so it also serves with the preprocessing and TTA code it was registered with."""
    from ferops.errors import FerError
    from ferops.inference import check_registered

    _register_champion(tmp_path)
    with pytest.raises(FerError, match=rf"has model '{NAME}' but no alias @best; its aliases: @champion \(v1\)"):
        check_registered(f"models:/{NAME}@best")  # a wrong alias is named as such, not answered with "retrain"
    with caplog.at_level("INFO", logger="ferops.inference"):  # serve and predict say which version they use
        check_registered(f"models:/{NAME}@champion")
    assert f"models:/{NAME}@champion is version 1 (MLflow run " in caplog.text
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_FEROPS, f"models:/{NAME}@champion"], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    where, shape = r.stdout.split()[-3], r.stdout.split()[-2:]
    assert "/code/ferops/__init__.py" in where and "".join(shape) == "(1,10)"  # label, label_name, 7 probs, model

    from ferops.inference import load_classifier

    (tmp_path / "mlartifacts").rename(tmp_path / "elsewhere")  # as in a copy of a project whose original moved
    with pytest.raises(FerError, match="MLflow records absolute paths, so a copied or moved project"):
        load_classifier(f"models:/{NAME}@champion")
