"""benchmarks/throughput.py: side-by-side training throughput of params variants."""

from __future__ import annotations

import sys
from pathlib import Path

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
