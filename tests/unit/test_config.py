"""ferops.config: params sections warn about keys no code reads (typos), the shipped files have none."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from ferops.config import KNOWN_KEYS, MODEL_KEYS, deep_merge, number, section, unknown_keys, unknown_model_keys
from ferops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_and_gpu_profile_use_only_known_keys():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = deep_merge(params, yaml.safe_load((ROOT / "profiles" / "gpu.yaml").read_text()))
    for p in (params, merged):
        assert set(KNOWN_KEYS) <= set(p)
        assert [m for name in KNOWN_KEYS for m in unknown_keys(name, p[name] or {})] == []
        td = p["train_deep"]
        assert unknown_model_keys("train_deep.common", td["common"]) == []
        assert [m for name, cfg in td["models"].items() for m in unknown_model_keys(name, cfg)] == []


def test_model_keys_are_the_ones_the_code_reads_and_a_typo_names_the_closest():
    """MODEL_KEYS lists every key the builders and training read (a key they read but the list lacks would be
    reported as ignored): each `cfg.get("<key>"` / `cfg["<key>"]` in models/zoo.py and training.py is in it."""
    import re

    read = set()
    for module in ("models/zoo.py", "training.py"):
        text = (ROOT / "src" / "ferops" / module).read_text()
        read |= set(re.findall(r"cfg(?:\.get\(|\[)\"(\w+)\"", text))
    assert read - {"use_augmented"} <= set(MODEL_KEYS)  # use_augmented: read only to refuse it
    assert unknown_model_keys("train_deep.models.resnet", {"arch": "resnet", "widht": [8]}) == [
        "params.yaml train_deep.models.resnet.widht: unknown key, ignored — did you mean `widths`?"]


def test_a_typo_is_warned_with_the_closest_key(caplog):
    params = {"split": {"stratergy": "stratified", "seed": 1}, "evaluate": {"zzz": 1}}
    with caplog.at_level(logging.WARNING, logger="ferops.config"):
        assert section(params, "split") == {"stratergy": "stratified", "seed": 1}  # still read as before
        section(params, "evaluate")
    assert "params.yaml split.stratergy: unknown key, ignored — did you mean `strategy`?" in caplog.text
    assert "params.yaml evaluate.zzz: unknown key, ignored (known: tta, batch_size)" in caplog.text
    assert "seed" not in caplog.text


def test_number_reads_typed_values_and_names_the_key_of_a_bad_one():
    sect = {"seed": 7, "copies": "2", "target": 0.25, "word": "ten", "flag": True, "half": 1.5}
    assert number(sect, "augment", "seed", 42, whole=True) == 7 and number(sect, "augment", "absent", 42) == 42
    assert number(sect, "augment", "copies", 1, whole=True, low=0) == 2  # YAML strings of digits are fine
    assert number(sect, "augment", "target", 0.5, low=0, high=1) == 0.25
    for key, words in (("word", "'ten' is not a whole number"), ("flag", "True is not a whole number"),
                       ("half", "1.5 is not a whole number")):
        with pytest.raises(ConfigError, match=f"params.yaml augment.{key}: {words}"):
            number(sect, "augment", key, 1, whole=True)
    with pytest.raises(ConfigError, match=r"split.target: 0.25 is not a number ≥ 0.5 and ≤ 1\."):
        number(sect, "split", "target", 0.5, low=0.5, high=1)
    with pytest.raises(ConfigError, match=r"^params.yaml seed: 'x' is not a whole number\.$"):  # a top-level key
        number({"seed": "x"}, "", "seed", 42, whole=True)


def test_a_params_path_that_is_a_folder_or_not_text_is_one_line_not_a_traceback(tmp_path):
    """`ferops serve --params ../other-project` (the folder, not its params.yaml), or a binary file: ConfigError
    naming the path and the fix (it was IsADirectoryError / UnicodeDecodeError with a traceback)."""
    from ferops.config import load_params, project_params

    with pytest.raises(ConfigError, match=rf"^{tmp_path}: a folder, not a params file — name the file itself "
                                          rf"\(e\.g\. {tmp_path / 'params.yaml'}\)\.$"):
        project_params(tmp_path)
    binary = tmp_path / "params.yaml.gz"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    with pytest.raises(ConfigError, match=rf"^{binary}: not a text file"):
        load_params(binary)


def test_a_section_that_is_not_a_mapping_is_one_line_naming_its_keys():
    """`evaluate: tencrop` (a value where the section's keys belong): one ConfigError, not the stage's .get()
    AttributeError traceback after a warning per character of the string."""
    with pytest.raises(ConfigError, match=r"^params.yaml evaluate: 'tencrop' is not a section — its settings go "
                                          r"indented under `evaluate:`, one `key: value` a line \(keys: tta, "
                                          r"batch_size\)\.$"):
        section({"evaluate": "tencrop"}, "evaluate")
    assert section({"evaluate": None}, "evaluate") == {}  # an empty section still means the defaults


def test_a_top_level_typo_or_an_unindented_setting_is_warned(tmp_path, caplog):
    """`sead: 7`, or `drop_blank: true` that lost its indentation under `split:`: every stage read the params and
    silently used the defaults (seed 42, blanks kept) — section() warns about its own keys only."""
    from ferops.config import load_params

    params = tmp_path / "params.yaml"
    params.write_text("sead: 7\nsplit:\n  strategy: usage\ndrop_blank: true\n")
    with caplog.at_level(logging.WARNING, logger="ferops.config"):
        assert load_params(params) == {"sead": 7, "split": {"strategy": "usage"}, "drop_blank": True}  # read as before
    assert f"{params} sead: unknown top-level key, ignored — did you mean `seed`?" in caplog.text
    assert (f"{params} drop_blank: unknown top-level key, ignored — a setting of `split:`? Indent it under that "
            "section.") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ferops.config"):
        load_params(ROOT / "params.yaml")
        load_params(ROOT / "profiles" / "gpu.yaml")
    assert caplog.text == ""
