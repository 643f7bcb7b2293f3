"""ferops.config: params sections warn about keys no code reads (typos), the shipped files have none."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from ferops.config import KNOWN_KEYS, deep_merge, section, unknown_keys

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_and_gpu_profile_use_only_known_keys():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = deep_merge(params, yaml.safe_load((ROOT / "profiles" / "gpu.yaml").read_text()))
    for p in (params, merged):
        assert set(KNOWN_KEYS) <= set(p)
        assert [m for name in KNOWN_KEYS for m in unknown_keys(name, p[name] or {})] == []


def test_a_typo_is_warned_with_the_closest_key(caplog):
    params = {"split": {"stratergy": "stratified", "seed": 1}, "evaluate": {"zzz": 1}}
    with caplog.at_level(logging.WARNING, logger="ferops.config"):
        assert section(params, "split") == {"stratergy": "stratified", "seed": 1}  # still read as before
        section(params, "evaluate")
    assert "params.yaml split.stratergy: unknown key, ignored — did you mean `strategy`?" in caplog.text
    assert "params.yaml evaluate.zzz: unknown key, ignored (known: tta, batch_size)" in caplog.text
    assert "seed" not in caplog.text
