"""ferops.training.check_config: a deep model's mistyped params fail in words, before TensorFlow starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferops.errors import ConfigError
from ferops.training import check_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_deep_configs_pass():
    from ferops.training import resolve_config

    td = yaml.safe_load((ROOT / "params.yaml").read_text())["train_deep"]
    for cfg in td["models"].values():
        assert check_config(resolve_config(td["common"], cfg))


@pytest.mark.parametrize("bad, words", [
    ({"epochs": "ten"}, "epochs='ten': give a whole number ≥ 1."),
    ({"epochs": 2.5}, "epochs=2.5: give a whole number ≥ 1."),
    ({"batch_size": 0}, "batch_size=0: give a whole number ≥ 1."),
    ({"lr": "fast"}, "lr='fast': give a number ≥ 0."),
    ({"dropout": 1.0}, "dropout=1.0: give a number ≥ 0 and ≤ 0.95."),  # Keras rejects rate 1 at build time
    ({"early_stopping_patience": True}, "early_stopping_patience=True: give a whole number ≥ 0."),
    ({"optimizer": "adamx"}, "optimizer='adamx': use adam | adamw | sgd_nesterov."),
    ({"schedule": "cosin"}, "schedule='cosin': use plateau | constant | cosine | onecycle."),
    ({"precision": "fp8"}, "precision='fp8': use auto | fp32 | bf16 | fp16."),
    ({"arch": "resnet50"}, "arch='resnet50': unknown model architecture"),
    ({"time_budget_min": -1}, "time_budget_min=-1"),
    ({"use_augmented": True}, "use_augmented=True: replaced by params.yaml train_deep.train_data"),  # older params
    ({"filters": 64}, "filters=64: give a list of whole numbers >= 1"),  # layer sizes: before TF, not at the build
    # left empty (`warmup_epochs:`): int(None) / float(None) ended in a TypeError after TF and the MLflow run started
    ({"warmup_epochs": None}, "warmup_epochs=null: give a number ≥ 0, or delete the line for the default"),
    ({"early_stopping_patience": None}, "early_stopping_patience=null: give a whole number ≥ 0, or delete"),
    ({"dropout": None}, "dropout=null: give a number ≥ 0 and ≤ 0.95, or delete"),
])
def test_bad_values_are_named(bad, words):
    with pytest.raises(ConfigError) as err:
        check_config({"arch": "cnn", "epochs": 3, "optimizer": "adamw", **bad})
    assert str(err.value).startswith(words)


def test_train_deep_stage_names_the_params_key_before_tensorflow(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_deep"]["models"]["cnn"]["epochs"] = "ten"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    missing = str(tmp_path / "absent")  # no data: the check must come first
    cmd = [sys.executable, str(ROOT / "stages" / "train_deep.py"), "--model", "cnn", "--split", missing, "--train",
           missing, "--tuned", missing, "--ingest-report", missing, "--out", missing, "--checkpoints", missing,
           "--curves", missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: params.yaml train_deep.models.cnn.epochs='ten': give a whole number ≥ 1." in r.stderr
    assert "tensorflow" not in r.stderr.lower() and not (tmp_path / "mlflow.db").exists()


def test_progressive_needs_a_fully_convolutional_arch():
    prog = {"progressive": {"size": 32, "epochs": 2}}
    for arch in ("dnn", "cnn", "vgg"):
        with pytest.raises(ConfigError, match=f"arch {arch} flattens a fixed-size feature map"):
            check_config({"arch": arch, **prog})
    check_config({"arch": "resnet", **prog})
    with pytest.raises(ConfigError, match="progressive.size=100"):
        check_config({"arch": "resnet", "progressive": {"size": 100, "epochs": 2}})  # caught before TF starts too


@pytest.mark.parametrize("bad, words", [
    ({"progressive": {"size": 32, "epoch": 12}}, "progressive={'size': 32, 'epoch': 12}: give {size"),  # was off
    ({"progressive": {"size": 32, "epochs": "ten"}}, "progressive="),  # was a raw ValueError
    ({"progressive": True}, "progressive=True: give {size"),  # was a raw AttributeError
    ({"batch_mix": {"mode": "mixup", "alfa": 0.2}}, "batch_mix={'mode': 'mixup', 'alfa': 0.2}: give {mode"),  # alpha 1
    ({"batch_mix": {"alpha": "high"}}, "batch_mix="),  # was a raw ValueError
])
def test_a_typo_in_a_nested_model_setting_is_named_not_trained_as_the_default(bad, words):
    # online_aug and swa refused unknown keys; progressive and batch_mix dropped them and trained the default
    with pytest.raises(ConfigError) as err:
        check_config({"arch": "resnet", "epochs": 3, **bad})
    assert str(err.value).startswith(words)


def test_aug_strength_null_is_the_default_strength_not_augmentation_off():
    from ferops.models.zoo import aug_config

    block = {"online_aug": {"rotate_deg": 10, "translate": 0.1, "erasing": 0.25}}
    assert aug_config({**block, "aug_strength": None}) == aug_config(block)
    assert aug_config({**block, "aug_strength": 0})["rotate_deg"] == 0.0  # 0 still turns the magnitudes off


def test_a_null_weight_decay_or_aug_strength_is_the_default_not_an_error():
    assert check_config({"arch": "cnn", "epochs": 3, "weight_decay": None, "aug_strength": None})
