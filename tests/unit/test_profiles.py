"""Profiles (`python -m ferops.profiles`): `-S` overrides that DVC's own parser applies to params.yaml as written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferops.config import deep_merge
from ferops.errors import FerError
from ferops.profiles import set_args
from ferops.training import resolve_config

ROOT = Path(__file__).resolve().parents[2]


def _profile_params(tmp_path: Path, profile: Path) -> dict:
    """params.yaml after DVC applies the profile's `-S` arguments (what `dvc exp run $(...)` does)."""
    from dvc.utils import hydra
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    args = set_args(yaml.safe_load(profile.read_text()), yaml.safe_load(params.read_text()))
    hydra.apply_overrides(params, [a for a in args if a != "-S"])
    return yaml.safe_load(params.read_text())


def test_new_keys_get_hydra_plus_and_values_json(tmp_path):
    args = set_args({"a": {"b": 2, "new": [1, 2], "flag": True, "none": None, "m": {"k": "v"}}}, {"a": {"b": 1}})
    assert args == ["-S", "a.b=2", "-S", "+a.new=[1,2]", "-S", "+a.flag=true", "-S", "+a.none=null",
                    "-S", '+a.m.k=v']
    with pytest.raises(FerError, match="profile key a.s: the value 'two words' holds whitespace"):
        set_args({"a": {"s": "two words"}}, {"a": {}})
    # `make exp` must not run the default pipeline under a profile's name, nor invent a section from a typo
    with pytest.raises(FerError, match="the profile holds no overrides"):
        set_args({}, {"a": {"b": 1}})
    with pytest.raises(FerError, match="profile key trian_deep.common.lr: params.yaml has no `trian_deep:` section "
                                       "— did you mean `train_deep`"):
        set_args({"trian_deep": {"common": {"lr": 0.1}}}, {"train_deep": {"common": {}}})


@pytest.mark.parametrize("profile, match", [
    ({"train_deep": {"models": {"resnet": {"widht": [64, 128]}}}},
     "profile key train_deep.models.resnet.widht: `widht` is not a model setting — did you mean `widths`"),
    ({"train_deep": {"common": {"learning_rate": 0.1}}}, "profile key train_deep.common.learning_rate"),
    ({"train_deep": {"models": {"new": {"arch": "resnet", "stem_strde": 2}}}}, "did you mean `stem_stride`"),
])
def test_a_typo_in_a_model_key_is_refused_not_added_with_plus(profile, match):
    # DVC accepts `+train_deep.models.resnet.widht=…` and training never reads it: the profile ran the defaults
    params = {"train_deep": {"common": {"lr": 0.01}, "models": {"resnet": {"arch": "resnet", "widths": [32]}}}}
    with pytest.raises(FerError, match=match):
        set_args(profile, params)
    assert set_args({"train_deep": {"models": {"resnet": {"widths": [64], "online_aug": {"crop": 40}}}}}, params) == [
        "-S", "train_deep.models.resnet.widths=[64]", "-S", "+train_deep.models.resnet.online_aug.crop=40"]


def test_readme_command_line_through_a_shell(tmp_path):
    """`dvc exp run $(python -m ferops.profiles profiles/gpu.yaml)`: the words the shell hands DVC, applied by DVC's
    own override parser, give the YAML merge (no quote may reach DVC, no value may be split)."""
    from dvc.utils import hydra
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    script = f'for w in $("{sys.executable}" -m ferops.profiles profiles/gpu.yaml "{params}"); do echo "$w"; done'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.splitlines()
    assert words[0] == "-S" and "'" not in proc.stdout
    hydra.apply_overrides(params, [w for w in words if w != "-S"])
    merged = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                        yaml.safe_load((ROOT / "profiles" / "gpu.yaml").read_text()))
    assert yaml.safe_load(params.read_text()) == merged

    missing = subprocess.run([sys.executable, "-m", "ferops.profiles", "profiles/none.yaml"], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert missing.returncode != 0 and missing.stdout == "" and "Traceback" not in missing.stderr
    assert "profile profiles/none.yaml: no such file" in missing.stderr


def test_gpu_profile_applied_by_dvc_is_the_yaml_merge_and_x4_trains_the_resnet_recipe(tmp_path):
    profile = ROOT / "profiles" / "gpu.yaml"
    applied = _profile_params(tmp_path, profile)
    merged = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load(profile.read_text()))
    assert applied == merged
    td = applied["train_deep"]
    single, x4 = (resolve_config(td["common"], td["models"][m]) for m in ("resnet", "resnet_x4"))
    assert x4.pop("ensemble_seeds") == [42, 7, 13, 21]
    # the ensemble's members train the single model's recipe, exactly its epochs (no CPU time budget to cut them)
    assert single == {**x4, "activation": "relu", "input_norm": "scale"} and single["time_budget_min"] is None


def test_a_value_replacing_a_whole_mapping_is_an_override_dvc_accepts(tmp_path):
    # `online_aug: null` replaces a mapping params.yaml holds: it got Hydra's `+` (add a new key), which DVC
    # refuses ("Invalid `--set-param` value"), so `make exp` failed on a valid profile
    from dvc.utils import hydra
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    profile = {"train_deep": {"common": {"online_aug": None}, "models": {"resnet": {"online_aug": {"crop": 40}}}}}
    args = set_args(profile, yaml.safe_load(params.read_text()))
    assert "train_deep.common.online_aug=null" in args
    hydra.apply_overrides(params, [a for a in args if a != "-S"])
    assert yaml.safe_load(params.read_text()) == deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), profile)


def test_a_profile_that_is_not_a_mapping_or_no_params_file_is_one_line_naming_the_fix(tmp_path):
    (tmp_path / "list.yaml").write_text("- train_deep\n")
    bad = subprocess.run([sys.executable, "-m", "ferops.profiles", "list.yaml", str(ROOT / "params.yaml")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "error: the profile is a list, not a mapping of params sections" in bad.stderr
    # outside the project: the missing file is params.yaml, and the hint must not be about profiles/
    away = subprocess.run([sys.executable, "-m", "ferops.profiles", str(ROOT / "profiles" / "gpu.yaml")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert away.returncode == 2 and "run from the project root" in away.stderr and "profiles live" not in away.stderr
