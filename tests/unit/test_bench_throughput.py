"""benchmarks/throughput.py: side-by-side training throughput of params variants."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import throughput  # noqa: E402


class FakeModel:
    """Records the batch size of every dataset `fit` sees; train steps cost nothing."""

    def __init__(self):
        self.fit_batches: list[int] = []

    def train_on_batch(self, x, y):
        return 0.0

    def fit(self, ds, epochs=1, verbose=0):
        self.fit_batches.append(ds["batch"])

    def count_params(self):
        return 1


def test_fit_steps_trains_each_variant_at_its_own_batch_size(tmp_path, monkeypatch, capsys):
    """`--variant b64=batch_size=64 --fit-steps N` timed the b64 model on the first variant's batches of 128, so its
    `fit` figure was the default batch's; each variant must be fed its own batch size (the same images for all)."""
    import ferops.training

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_deep": {"common": {"batch_size": 128}, "models": {"resnet": {}}}}))
    models: list[FakeModel] = []
    seen: list[tuple[int, int]] = []

    def compiled_model(cfg, *a, **k):
        models.append(FakeModel())
        return models[-1], 0.001

    def make_dataset(pixels, labels, batch_size, **kw):
        seen.append((batch_size, len(pixels)))
        return {"batch": batch_size}

    monkeypatch.setattr(throughput, "compiled_model", compiled_model)
    monkeypatch.setattr(ferops.training, "make_dataset", make_dataset)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--params", str(params), "--variant", "base=",
                                      "--variant", "b64=batch_size=64", "--rounds", "1", "--steps", "1",
                                      "--fit-steps", "2"])
    throughput.main()
    assert [m.fit_batches for m in models] == [[128, 128], [64, 64]]  # warm-up + timed fit, each at its batch
    assert {n for _, n in seen} == {256}  # 2 batches of the first variant's size, the same images for every variant
    assert capsys.readouterr().out.count("img/s through model.fit") == 2


def test_fit_steps_mixes_a_batch_mix_variant_as_training_does(tmp_path, monkeypatch):
    """`--variant cm=batch_mix={mode:cutmix} --fit-steps N` timed plain batches: fit_throughput built make_dataset
    without the variant's mix, so cutmix's input-path cost was not in the `fit` figure. Each variant's dataset must
    get the mix train_keras gives it — cutmix with the model's crop (the box's label weight), none for the base."""
    import ferops.training

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_deep": {"common": {"batch_size": 32},
                                                     "models": {"resnet": {"online_aug": {"crop": 44}}}}}))
    mixes: list = []

    def make_dataset(pixels, labels, batch_size, **kw):
        mixes.append(kw.get("mix"))
        return {"batch": batch_size}

    monkeypatch.setattr(throughput, "compiled_model", lambda cfg, *a, **k: (FakeModel(), 0.001))
    monkeypatch.setattr(ferops.training, "make_dataset", make_dataset)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--params", str(params), "--variant", "base=",
                                      "--variant", "cm=batch_mix={mode: cutmix, alpha: 1.0, p: 0.5}",
                                      "--variant", "mu=batch_mix={mode: mixup, alpha: 0.2}",
                                      "--rounds", "1", "--steps", "1", "--fit-steps", "1"])
    throughput.main()
    assert mixes == [None, {"mode": "cutmix", "alpha": 1.0, "p": 0.5, "crop": 44}, {"mode": "mixup", "alpha": 0.2, "p": 1.0}]


def test_a_malformed_batch_mix_is_refused_before_any_timing(tmp_path, monkeypatch):
    """`batch_mix={mode:cutmix}` (YAML without the space: {'mode:cutmix': None}) was found only by --fit-steps'
    make_dataset, after every variant's train steps had been timed; it is one error before any model is built."""
    from ferops.errors import ConfigError

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_deep": {"common": {"batch_size": 32}, "models": {"resnet": {}}}}))
    built: list = []
    monkeypatch.setattr(throughput, "compiled_model", lambda cfg, *a, **k: built.append(cfg) or (FakeModel(), 0.001))
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--params", str(params), "--variant", "base=",
                                      "--variant", "cm=batch_mix={mode:cutmix}", "--fit-steps", "1"])
    with pytest.raises(ConfigError, match="batch_mix"):
        throughput.main()
    assert built == []
