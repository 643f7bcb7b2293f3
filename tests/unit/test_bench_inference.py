"""benchmarks/inference.py --by-stage: the served model cut into stem, stages and head, with multiply-adds per part."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import inference  # noqa: E402

from ferops.models import zoo  # noqa: E402


def test_by_stage_cuts_a_folded_resnet_at_its_stages_and_counts_its_multiply_adds():
    """A 2-stage ResNet at 48 px (stem stride 2, no pool, no crop): stem 24x24x8, stage s0 24x24x8, stage s1 12x12x16
    with a 1x1 projection. Every layer lands in exactly one part, each stage ends with the activation after its
    last add, and the parts' multiply-adds are those of their convolutions counted by hand."""
    cfg = {"arch": "resnet", "stages": [1, 1], "widths": [8, 16], "stem_stride": 2, "stem_pool": False,
           "online_aug": {"crop": 0}}
    model = zoo.fold_batchnorm(zoo.build_model(cfg, seed=0, inference=True))
    cuts = inference.stage_cuts(model)
    assert [part for part, _ in cuts] == ["stem", "s0", "s1", "head"]
    ends = [model.layers[i] for _, i in cuts]
    assert [type(layer).__name__ for layer in ends[1:3]] == ["Activation", "Activation"]
    assert model.layers[cuts[1][1] - 1].name == "s0b0_add" and ends[-1] is model.layers[-1]

    stem = 24 * 24 * 9 * 1 * 8
    s0 = 2 * 24 * 24 * 9 * 8 * 8
    s1 = 12 * 12 * 9 * 8 * 16 + 12 * 12 * 9 * 16 * 16 + 12 * 12 * 8 * 16
    head = 16 * 7
    parts = inference.model_parts(model)
    assert {p["part"]: round(p["mmacs_per_image"] * 1e6) for p in parts} == {"stem": stem, "s0": s0, "s1": s1,
                                                                            "head": head}
    assert sum(p["layers"] for p in parts) == len(model.layers)


def test_a_model_without_stages_is_one_part():
    model = zoo.build_model({"arch": "cnn", "filters": [4, 8], "dense": 8, "online_aug": {"crop": 0}}, inference=True)
    assert inference.stage_cuts(model) == [("model", len(model.layers) - 1)]
