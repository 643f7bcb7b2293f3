"""Training behaviour: config/precision helpers, a smoke run, kill-and-resume, learning the synthetic set, flip invariance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import keras

from ferops.data.io import FerData  # noqa: E402
from ferops.data.split import stratified_subsample  # noqa: E402
from ferops.errors import ConfigError  # noqa: E402
from ferops.training import (  # noqa: E402
    _lr_schedules,
    budget_epochs,
    choose_precision,
    class_weight_vector,
    ema_decay,
    make_dataset,
    make_optimizer,
    mix_batch,
    mix_config,
    recompute_bn_stats,
    resolve_config,
    steps_per_execution,
    swa_config,
    time_budget_s,
    train_keras,
)
from ferops.tta import predict_proba, tta_views  # noqa: E402

TINY = {"arch": "dnn", "hidden": [16], "dropout": 0.0, "epochs": 3, "batch_size": 32, "lr": 1e-3, "optimizer": "adamw",
        "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1, "class_weights": True,
        "early_stopping_patience": 5, "online_aug": {"hflip": True, "crop": 44, "erasing": 0.2}, "precision": "fp32"}


def _data(n: int, seed: int) -> FerData:
    from ferops.data.synthetic import make_synthetic

    return make_synthetic(n, seed)


class _EpochsSeen(keras.callbacks.Callback):
    """The epochs a run trains, in order (a resumed run should skip those it had finished)."""

    def __init__(self):
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def tiny():
    d = _data(240, 1)
    return d.subset(np.arange(240) < 180), d.subset(np.arange(240) >= 180)


def test_resolve_config_deep_merges_and_tuned_wins():
    common = {"lr": 1e-3, "online_aug": {"hflip": True, "crop": 44}, "epochs": 30}
    cfg = resolve_config(common, {"arch": "resnet", "online_aug": {"crop": 40}}, {"lr": 5e-4})
    assert cfg == {"lr": 5e-4, "online_aug": {"hflip": True, "crop": 40}, "epochs": 30, "arch": "resnet"}
    assert common["online_aug"]["crop"] == 44  # inputs untouched


def test_the_chosen_precision_is_what_trains(tiny):
    """bf16 asked, bf16 trained: the layers compute in bfloat16 during fit (the policy used to be reset by
    clear_session after it was set, so every model trained in float32), and the exported model is float32."""
    seen = []

    class Policies(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.extend(layer.dtype_policy.name for layer in self.model.layers if layer.weights)

    res = train_keras(*tiny, {**TINY, "epochs": 1, "precision": "bf16"}, seed=0, verbose=0,
                      extra_callbacks=[Policies()])
    # every layer but the head, which the zoo keeps in float32 for a stable softmax
    assert res.precision == "mixed_bfloat16" and set(seen[:-1]) == {"mixed_bfloat16"} and seen[-1] == "float32", seen
    assert {layer.dtype_policy.name for layer in res.model.layers if layer.weights} == {"float32"}


def test_choose_precision():
    assert choose_precision("fp32") == "float32"
    assert choose_precision("bf16") == "mixed_bfloat16"
    assert choose_precision("auto") in {"float32", "mixed_bfloat16", "mixed_float16"}
    with pytest.raises(ConfigError):
        choose_precision("int8")


def test_class_weights_average_one_and_favour_rare_classes():
    y = np.array([0] * 90 + [1] * 10)
    w = class_weight_vector(y)
    assert w[1] > w[0] and w[2] == 0
    assert math.isclose(w[y].mean(), 1.0)


def test_warmup_cosine_and_onecycle_schedules():
    s = _lr_schedules()
    wc = s["WarmupCosine"](1.0, total_steps=100, warmup_steps=10)
    vals = [float(keras.ops.convert_to_numpy(wc(i))) for i in (0, 9, 10, 55, 100)]
    assert vals[0] < vals[1] <= 1.0 and math.isclose(vals[2], 1.0, rel_tol=1e-5) and vals[3] < 1.0
    assert math.isclose(vals[4], 0.01, rel_tol=1e-3)
    oc = s["OneCycle"](1.0, total_steps=100)
    assert float(keras.ops.convert_to_numpy(oc(0))) == pytest.approx(0.04)
    assert float(keras.ops.convert_to_numpy(oc(30))) == pytest.approx(1.0)
    assert float(keras.ops.convert_to_numpy(oc(100))) < 1e-3
    assert type(wc).from_config(wc.get_config()).get_config() == wc.get_config()  # serialisable


def test_schedule_horizon_is_re_aimed_without_a_retrace():
    """TimeBudget moves `total_steps` after most epochs; the traced step must see it without being traced again."""
    import tensorflow as tf

    for name in ("WarmupCosine", "OneCycle"):
        sched = _lr_schedules()[name](1.0, total_steps=100)
        lr = tf.function(lambda step, sched=sched: sched(step))
        assert float(lr(tf.constant(50))) > 0.1
        sched.total_steps = 50  # step 50 is now the end of the schedule
        assert float(lr(tf.constant(50))) < 0.011
        assert lr.experimental_get_tracing_count() == 1 and sched.get_config()["total_steps"] == 50


def test_subsample_keeps_every_class():
    d = _data(700, 2)
    sub = stratified_subsample(d, 70, seed=0)
    assert 60 <= len(sub) <= 80
    assert set(np.unique(sub.emotion)) == set(np.unique(d.emotion))


def test_tta_views_hit_the_corner_and_neighbour_crops():
    from ferops.tta import view_indices

    x = np.random.default_rng(0).integers(0, 256, (2, 48, 48)).astype(np.uint8)
    views = tta_views(x, "tencrop", crop=44)
    assert len(views) == 10 and len(tta_views(x, "flip")) == 2 and len(tta_views(x, "tencrop", crop=0)) == 2
    for fewer in (tta_views(x, "none"), tta_views(x, "flip")):  # every mode's views are a prefix of ten-crop's
        for got, want in zip(fewer, views):
            np.testing.assert_array_equal(got, want)
    centre = [v[:, 2:46, 2:46, 0] for v in views[::2]]  # the model's centre crop of each unflipped view
    corners = [x[:, 2:46, 2:46]] + [x[:, r:r + 44, c:c + 44] for r in (4, 0) for c in (4, 0)]
    for got, want in zip(centre, corners):
        np.testing.assert_array_equal(got, want)
    shift = tta_views(x, "shift", crop=44)
    neighbours = [x[:, 2:46, 2:46]] + [x[:, r:r + 44, c:c + 44] for r in (3, 2, 1) for c in (3, 2, 1) if (r, c) != (2, 2)]
    assert len(shift) == 18
    for got, want in zip([v[:, 2:46, 2:46, 0] for v in shift[::2]], neighbours):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(shift[3][:, 2:46, 2:46, 0], neighbours[1][:, :, ::-1])  # each with its mirror
    every = tta_views(x, "all", crop=44)  # each mode's views are found in one `all` pass
    assert len(every) == 26 and len(tta_views(x, "all", crop=0)) == 2
    for mode in ("none", "flip", "tencrop", "shift"):
        for got, want in zip([every[i] for i in view_indices(mode, 26)], tta_views(x, mode, crop=44)):
            np.testing.assert_array_equal(got, want)
    assert view_indices("shift", 2) == [0, 1]  # a crop-less model: flip's views
    with pytest.raises(ConfigError, match="tta="):
        tta_views(x, "dense")


def test_smoke_training_returns_history_with_lr(tiny):
    train, val = tiny
    res = train_keras(train, val, TINY, seed=0, verbose=0, max_epochs=2)
    assert res.epochs_run == 2 and len(res.history["lr"]) == 2
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(res.history)
    assert 1 <= res.best_epoch <= 2 and res.images_per_s > 0 and res.precision == "float32"
    assert 0 <= res.val_accuracy <= 1 and res.val_proba.shape == (len(val), 7)
    # the returned model is the float32 inference copy and agrees with val_proba
    np.testing.assert_allclose(predict_proba(res.model, val.pixels), res.val_proba, atol=1e-6)


def test_killed_run_resumes_at_the_next_epoch(tiny, tmp_path):
    train, val = tiny

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed after epoch 2")

    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed"):
        train_keras(train, val, TINY, seed=0, verbose=0, checkpoint_dir=ckpt, extra_callbacks=[Kill()])
    assert (ckpt / "state.json").exists()
    before = json.loads((ckpt / "state.json").read_text())["elapsed_s"]  # the two epochs' training time
    assert before > 0

    seen = _EpochsSeen()

    resumed = train_keras(train, val, TINY, seed=0, verbose=0, checkpoint_dir=ckpt, extra_callbacks=[seen])
    assert seen.epochs == [2]  # only the third epoch ran
    assert resumed.epochs_run == 3 and not ckpt.exists()  # full history, checkpoint removed on success
    assert resumed.wall_s > before  # the run's training time counts the epochs before the kill too
    straight = train_keras(train, val, TINY, seed=0, verbose=0)
    # epochs 1-2 come from the checkpoint; the LR schedule continues from the restored optimizer step.
    # (Epoch 3 sees a fresh shuffle order after a restart, so it is not bit-identical to a straight run.)
    np.testing.assert_allclose(resumed.history["val_loss"][:2], straight.history["val_loss"][:2], rtol=1e-5)
    np.testing.assert_allclose(resumed.history["lr"], straight.history["lr"], rtol=1e-6)
    assert np.isfinite(resumed.history["val_loss"][2])


@pytest.fixture(scope="module")
def learned():
    """A small CNN trained on the synthetic faces (~20-40 s on 2 cores)."""
    d = _data(2500, 0)
    train, val = d.subset(np.arange(2500) < 2000), d.subset(np.arange(2500) >= 2000)
    cfg = {"arch": "cnn", "filters": [16, 32], "dense": 64, "dropout": 0.1, "epochs": 7, "batch_size": 64, "lr": 3e-3,
           "optimizer": "adam", "schedule": "onecycle", "label_smoothing": 0.0, "early_stopping_patience": 7,
           "online_aug": {"hflip": True}, "precision": "fp32"}
    return train_keras(train, val, cfg, seed=0, verbose=0), val


def test_small_cnn_learns_the_synthetic_set(learned):
    res, _ = learned
    assert res.val_accuracy >= 0.90, res.history["val_accuracy"]
    assert res.val_macro_f1 >= 0.80


def test_predictions_are_invariant_to_horizontal_flip(learned):
    res, val = learned
    p = predict_proba(res.model, val.pixels).argmax(1)
    p_flip = predict_proba(res.model, val.pixels[:, :, ::-1]).argmax(1)
    assert (p == p_flip).mean() >= 0.85
    # flip TTA averages both views, so it can only differ where the two disagree
    p_tta = predict_proba(res.model, val.pixels, tta="flip").argmax(1)
    assert np.all((p_tta == p) | (p != p_flip))


def test_array_batches_feed_non_tensorflow_backends():
    """The PyDataset that make_dataset returns under KERAS_BACKEND=jax/torch: shapes, one-hot, seeded reshuffles."""
    from ferops.training import _array_batches

    x = np.arange(10 * 48 * 48, dtype=np.int64).reshape(10, 48, 48, 1).astype(np.uint8)
    y, w = np.arange(10, dtype=np.int32) % 7, np.linspace(0.5, 1.5, 10).astype(np.float32)
    ds = _array_batches()((x, y, w), 4, shuffle=True, seed=3)
    assert len(ds) == 3
    xb, yb, wb = ds[0]
    assert xb.dtype == np.float32 and xb.shape == (4, 48, 48, 1) and yb.shape == (4, 7)
    first = np.concatenate([ds[i][1].argmax(1) for i in range(3)])
    assert sorted(first.tolist()) == sorted(y.tolist())  # every row once per epoch
    ds.on_epoch_end()
    again = _array_batches()((x, y, w), 4, shuffle=True, seed=3)
    assert np.array_equal(again[0][0], xb)  # same seed → same order
    assert not np.array_equal(np.concatenate([ds[i][2] for i in range(3)]), np.concatenate([again[i][2] for i in range(3)]))
    plain = _array_batches()((x,), 4, shuffle=False, seed=0)
    assert len(plain[2]) == 1 and np.array_equal(plain[2][0], x[8:].astype(np.float32))


def test_no_gpu_means_no_capability_and_cpu_precision():
    from ferops.training import _cpu_flags, gpu_capability

    if gpu_capability() is not None:
        pytest.skip("a GPU is visible")
    bf16 = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert choose_precision("auto") == ("mixed_bfloat16" if bf16 else "float32")


@pytest.mark.parametrize("cc, policy", [((7, 5), "mixed_float16"), ((8, 0), "mixed_bfloat16"), ((9, 0), "mixed_bfloat16")])
def test_auto_precision_on_gpus_prefers_bf16_from_ampere(monkeypatch, cc, policy):
    import ferops.training as training

    monkeypatch.setattr(training, "gpu_capability", lambda: cc)
    assert training.choose_precision("auto") == policy
    assert training.choose_precision("fp32") == "float32"  # an explicit setting always wins


def test_data_parallel_is_off_on_one_device_and_trains_under_a_forced_strategy(tiny, monkeypatch):
    import ferops.training as training

    assert training.data_parallel("auto") is None and training.data_parallel(False) is None  # CPU-only here
    monkeypatch.setattr(training, "gpu_count", lambda: 4)
    assert training.data_parallel("auto") is not None  # several GPUs → every one of them
    with pytest.raises(ConfigError, match="data_parallel"):
        training.data_parallel("sometimes")
    monkeypatch.undo()
    train, val = tiny
    # forced on a CPU-only machine: one replica, the same training loop (MirroredStrategy on TensorFlow)
    res = train_keras(train, val, {**TINY, "data_parallel": True}, seed=0, verbose=0, max_epochs=1)
    assert res.epochs_run == 1 and res.val_proba.shape == (len(val), 7)
    if keras.backend.backend() == "tensorflow":
        assert type(res.train_model.distribute_strategy).__name__ == "MirroredStrategy"


def test_progressive_resizing_trains_small_first_then_at_the_crop(tiny, tmp_path, monkeypatch):
    from ferops.models.zoo import build_model, progressive_config

    assert progressive_config({}) is None and progressive_config({"progressive": {"size": 24, "epochs": 0}}) is None
    with pytest.raises(ConfigError, match="progressive.size"):
        progressive_config({"progressive": {"size": 44, "epochs": 2}}, 44)
    with pytest.raises(ConfigError, match="progressive="):
        progressive_config({"progressive": {"epochs": 2}})
    cfg = {**TINY, "arch": "resnet", "stages": [1, 1], "widths": [8, 16], "progressive": {"size": 24, "epochs": 1},
           "input_norm": "image"}
    model = build_model(cfg, seed=0)
    low = model.get_layer("low_res")
    x = np.full((2, 48, 48, 1), 128.0, np.float32)
    low.enabled = True
    assert tuple(low(model.get_layer("crop")(x, training=True), training=True).shape) == (2, 24, 24, 1)
    assert tuple(low(x, training=False).shape) == (2, 48, 48, 1)  # inference never resizes
    seen = []  # image sizes the traced train steps were built for
    call = type(low).call

    def spy(self, images, training=None):
        out = call(self, images, training)
        if training:
            seen.append(int(out.shape[1]))
        return out

    monkeypatch.setattr(type(low), "call", spy)
    train, val = tiny
    res = train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=tmp_path / "ckpt")
    assert res.history["train_size"][:3] == [24.0, 44.0, 44.0]
    assert seen[0] == 24 and seen[-1] == 44  # epoch 1 really ran small (static shape), then re-traced at the crop
    assert "low_res" not in [layer.name for layer in res.model.layers]  # the exported model is the plain network
    assert res.val_proba.shape == (len(val), 7)


def test_progressive_crop_mode_takes_windows_at_the_native_scale():
    from ferops.models.zoo import build_model, progressive_config

    assert progressive_config({"progressive": {"size": 32, "epochs": 3}})["mode"] == "resize"  # the default
    with pytest.raises(ConfigError, match="progressive.mode"):
        progressive_config({"progressive": {"size": 32, "epochs": 3, "mode": "zoom"}})
    cfg = {**TINY, "arch": "resnet", "stages": [1, 1], "widths": [8, 16],
           "progressive": {"size": 24, "epochs": 1, "mode": "crop"}}
    low = build_model(cfg, seed=0).get_layer("low_res")
    low.enabled = True
    x = np.arange(4 * 44 * 44, dtype=np.float32).reshape(4, 44, 44, 1)  # every pixel value unique
    out = np.asarray(low(x, training=True))
    assert out.shape == (4, 24, 24, 1)
    offsets = set()
    for img, win in zip(x, out):  # each output is an unscaled 24x24 window of its own image
        top, left = divmod(int(win[0, 0, 0]) % (44 * 44), 44)
        np.testing.assert_array_equal(win, img[top:top + 24, left:left + 24])
        offsets.add((top, left))
    assert len(offsets) > 1  # one offset per image, not one per batch


class _SeqClock:
    """A simulated clock that returns the given readings in turn."""

    def __init__(self, readings):
        self.readings = iter(readings)

    def __call__(self) -> float:
        return float(next(self.readings))


def test_time_budget_plans_from_full_size_epochs_under_progressive(tiny, monkeypatch):
    """Two 5-s small epochs, then 15-s full ones, 70-s budget: the small epochs (scaled by the pixel ratio, 44/24 squared)
    never promise more full epochs than fit, and the run ends on budget at epoch 6."""
    import ferops.training as training

    monkeypatch.setattr(training, "_clock", _SeqClock([0, 5, 10, 25, 40, 55, 70, 85, 100, 115, 130]))
    cfg = {**TINY, "arch": "resnet", "stages": [1, 1], "widths": [8, 16], "epochs": 10, "time_budget_min": 70 / 60,
           "progressive": {"size": 24, "epochs": 2, "mode": "crop"}}
    train, val = tiny
    res = train_keras(train, val, cfg, seed=0, verbose=0)
    assert res.history["train_size"][:3] == [24.0, 24.0, 44.0]
    # after epoch 1: 65 s left at 5 x 3.36 = 16.8 s an epoch -> 3 more; after epoch 3, the full epochs' own 15 s
    assert res.history["planned_epochs"] == [4.0, 5.0, 6.0, 6.0, 6.0, 6.0]
    assert res.epochs_run == 6 and res.history["time_s"][-1] == 70.0


def _onehot_batch(n: int = 16):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 48, 48, 1)).astype(np.float32)
    y = np.eye(7, dtype=np.float32)[np.arange(n) % 7]
    return x, y, np.linspace(0.5, 1.5, n).astype(np.float32)


def test_mixup_blends_images_labels_and_weights_with_one_lambda():
    x, y, w = _onehot_batch()
    mx, my, mw = mix_batch(x, y, w, np.random.default_rng(1), mode="mixup", alpha=1.0, p=1.0)
    np.testing.assert_allclose(my.sum(1), 1.0, rtol=1e-6)
    lam = my[np.arange(16), y.argmax(1)].min()  # own-class share of a row whose partner has another class
    assert 0 < lam < 1
    # every row is λ·itself + (1-λ)·one partner row, the same partner and λ for image, label and weight
    for i in range(16):
        partners = [j for j in range(16) if np.allclose(mx[i], lam * x[i] + (1 - lam) * x[j], atol=1e-2)]
        assert partners, i
        j = partners[0]
        np.testing.assert_allclose(my[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5)
        np.testing.assert_allclose(mw[i], lam * w[i] + (1 - lam) * w[j], atol=1e-5)


def test_cutmix_pastes_one_box_and_mixes_labels_by_its_area():
    x, y, _ = _onehot_batch()
    mx, my, mw = mix_batch(x, y, None, np.random.default_rng(5), mode="cutmix", alpha=1.0, p=1.0)
    assert mw is None
    changed = np.any(mx != x, axis=(0, 3))  # pixels pasted in at least one image: one axis-aligned box
    rows, cols = np.where(changed)
    assert changed.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    area = changed.sum() / (48 * 48)
    own = my[np.arange(16), y.argmax(1)]
    # rows whose partner has another class keep exactly 1 - area of their own label
    np.testing.assert_allclose(own.min(), 1 - area, atol=0.02)
    np.testing.assert_allclose(my.sum(1), 1.0, rtol=1e-6)


def test_cutmix_weighs_the_box_by_its_expected_share_of_the_models_crop():
    """The model crops a random 44-px window after the mix: a box's label weight is its mean visible area over the
    window's 5 × 5 offsets, divided by 44², not its area over 48² (which over-weighted boxes at the border)."""
    x, y, _ = _onehot_batch()
    for seed in range(6):
        mx, my, _ = mix_batch(x, y, None, np.random.default_rng(seed), mode="cutmix", alpha=1.0, p=1.0, crop=44)
        rows, cols = np.where(np.any(mx != x, axis=(0, 3)))
        if not len(rows):
            continue
        box = np.zeros((48, 48), bool)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        seen = np.mean([box[oy:oy + 44, ox:ox + 44].sum() for oy in range(5) for ox in range(5)]) / 44 ** 2
        own = my[np.arange(16), y.argmax(1)].min()  # a row whose partner has another class
        np.testing.assert_allclose(own, 1 - seen, atol=1e-5)
        np.testing.assert_allclose(my.sum(1), 1.0, rtol=1e-6)


def test_mix_off_for_p_zero_and_bad_configs_are_config_errors():
    x, y, w = _onehot_batch()
    same = mix_batch(x, y, w, np.random.default_rng(0), mode="cutmix", alpha=1.0, p=0.0)
    assert same[0] is x and same[1] is y and same[2] is w
    assert mix_config({}) is None and mix_config({"batch_mix": None}) is None
    assert mix_config({"batch_mix": {"mode": "mixup"}}) == {"mode": "mixup", "alpha": 1.0, "p": 1.0}
    for bad in ({"mode": "blend"}, {"alpha": 0}, {"p": 2}, "cutmix"):
        with pytest.raises(ConfigError, match="batch_mix"):
            mix_config({"batch_mix": bad})


def test_mixed_batches_through_tf_data_and_the_array_batches_alike():
    """Both make_dataset paths mix with soft labels, reproducibly per seed, with new draws every epoch."""
    from ferops.training import _array_batches

    x = np.random.default_rng(0).integers(0, 256, (64, 48, 48)).astype(np.uint8)
    y = np.arange(64, dtype=np.int32) % 7
    mix = {"mode": "cutmix", "alpha": 1.0, "p": 1.0}

    def epoch(ds):
        return [tuple(np.asarray(t) for t in b) for b in ds]

    tf_ds = make_dataset(x, y, 16, shuffle=True, seed=3, mix=mix)
    e1, e2 = epoch(tf_ds), epoch(tf_ds)
    assert e1[0][0].shape == (16, 48, 48, 1) and e1[0][1].shape == (16, 7)
    assert any(np.any((b[1] > 0) & (b[1] < 1)) for b in e1)  # soft labels
    assert not np.array_equal(e1[0][1], e2[0][1]) or not np.array_equal(e1[0][0], e2[0][0])
    again = epoch(make_dataset(x, y, 16, shuffle=True, seed=3, mix=mix))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(e1, again))

    arr = _array_batches()((x.reshape(-1, 48, 48, 1), y), 16, shuffle=True, seed=3, mix=mix)
    first = arr[0]
    assert first[1].shape == (16, 7) and np.any((first[1] > 0) & (first[1] < 1)) and np.allclose(first[1].sum(1), 1.0)
    assert np.array_equal(arr[0][0], first[0])  # same batch fetched twice → same draws


def test_training_with_batch_mix_runs(tiny, monkeypatch):
    import ferops.training as training

    train, val = tiny
    mixes = []  # the `mix` each dataset train_keras builds is given: the mixing itself is tested above
    real = training.make_dataset
    monkeypatch.setattr(training, "make_dataset", lambda *a, **kw: mixes.append(kw.get("mix")) or real(*a, **kw))
    res = train_keras(train, val, {**TINY, "batch_mix": {"mode": "mixup", "alpha": 0.4, "p": 0.5}}, seed=0,
                      verbose=0, max_epochs=1)
    assert res.epochs_run == 1 and np.isfinite(res.history["loss"][0])
    assert mixes[0] == {"mode": "mixup", "alpha": 0.4, "p": 0.5} and not any(mixes[1:])  # train batches only
    # cutmix learns the model's training crop, which its label weights count
    seen = []
    real_mix = training.mix_batch
    monkeypatch.setattr(training, "mix_batch", lambda *a, **k: seen.append(k["crop"]) or real_mix(*a, **k))
    cfg = {**TINY, "online_aug": {"crop": 44}, "batch_mix": {"mode": "cutmix", "p": 1.0}}
    assert train_keras(train, val, cfg, seed=0, verbose=0, max_epochs=1).epochs_run == 1
    assert seen and set(seen) == {44}


def test_ema_config_is_checked():
    assert ema_decay({}) is None and ema_decay({"ema": None}) is None and ema_decay({"ema": 0}) is None
    assert ema_decay({"ema": 0.998}) == 0.998
    for bad in (1.0, 1.5, -0.1, "fast"):
        with pytest.raises(ConfigError, match="ema="):
            ema_decay({"ema": bad})


def test_ema_average_follows_the_warmed_up_decay():
    """The optimizer's average after each step is d·avg + (1-d)·w with d = min(decay, (1+t)/(10+t))."""
    opt = make_optimizer({"optimizer": "sgd_nesterov", "ema": 0.3}, 0.1)
    assert type(opt).__name__ == "SGD" and opt.use_ema
    w = keras.Variable(np.array([1.0, -2.0], dtype="float32"))
    opt.build([w])
    avg = np.zeros(2)
    for t, g in enumerate([[1.0, 0.5], [-2.0, 1.0], [0.5, 0.5], [3.0, -1.0]]):
        opt.apply_gradients([(keras.ops.convert_to_tensor(np.array(g, dtype="float32")), w)])
        d = min(0.3, (1 + t) / (10 + t))
        avg = d * avg + (1 - d) * keras.ops.convert_to_numpy(w)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(opt._model_variables_moving_average[0]), avg, rtol=1e-5)
    assert not np.allclose(avg, keras.ops.convert_to_numpy(w))  # the average lags the raw weights


def test_ema_weights_are_validated_and_kept(tiny):
    """Val scores the average each epoch, training goes on from the raw weights, and the best average is returned."""
    train, val = tiny
    probe: dict[str, list[np.ndarray]] = {"begin": [], "validated": [], "average": [], "end": []}

    class Probe(keras.callbacks.Callback):  # listed after ferops' own callbacks
        def kernel(self):
            return keras.ops.convert_to_numpy(self.model.trainable_variables[0]).copy()

        def on_epoch_begin(self, epoch, logs=None):
            probe["begin"].append(self.kernel())

        def on_test_end(self, logs=None):
            probe["validated"].append(self.kernel())
            probe["average"].append(keras.ops.convert_to_numpy(self.model.optimizer._model_variables_moving_average[0]))

        def on_epoch_end(self, epoch, logs=None):
            probe["end"].append(self.kernel())

    res = train_keras(train, val, {**TINY, "ema": 0.9, "class_weights": False}, seed=0, verbose=0, max_epochs=2,
                      extra_callbacks=[Probe()])
    for validated, average, end in zip(probe["validated"], probe["average"], probe["end"]):
        np.testing.assert_allclose(validated, average, rtol=1e-6)  # val scored the average ...
        assert not np.allclose(validated, end)  # ... which lags the raw weights
    np.testing.assert_array_equal(probe["begin"][1], probe["end"][0])  # epoch 2 trains on from the raw weights
    # the returned model is the best epoch's average; its val accuracy is the one val logged then, unless the
    # average's own BN statistics scored higher (then that one)
    assert res.ema_bn_val_accuracy is not None
    best = max(res.history["val_accuracy"])
    if res.ema_bn_used:
        assert res.ema_bn_val_accuracy > best
        assert res.val_accuracy == pytest.approx(res.ema_bn_val_accuracy, abs=1e-6)
    else:
        assert res.ema_bn_val_accuracy <= best and res.val_accuracy == pytest.approx(best, abs=1e-6)
    kept = keras.ops.convert_to_numpy(res.train_model.trainable_variables[0])
    np.testing.assert_allclose(kept, probe["average"][res.best_epoch - 1], rtol=1e-6)
    from ferops.training import AVERAGE_METRICS, average_metrics  # what train_deep logs to MLflow

    assert average_metrics(res) == {"ema_bn_val_accuracy": res.ema_bn_val_accuracy, "ema_bn_used": int(res.ema_bn_used)}
    assert set(average_metrics(res)) <= set(AVERAGE_METRICS)


def test_choose_recalibrated_keeps_new_bn_statistics_only_when_val_prefers_them(tiny):
    """`ema`'s candidate is the weights the model holds with BN statistics of their own: an unbeatable best keeps
    every weight as it was; a beaten one keeps the trainable weights and recomputes every BN layer's statistics."""
    from ferops.training import choose_recalibrated

    train, val = tiny
    model = train_keras(train, val, {**TINY, "epochs": 1, "class_weights": False}, seed=0, verbose=0).train_model
    ds_val = make_dataset(val.pixels, val.emotion.astype(int), 64)
    before = [w.copy() for w in model.get_weights()]
    moving = [i for i, v in enumerate(model.weights) if "moving" in v.path]
    assert moving

    acc, kept = choose_recalibrated(model, train.pixels, ds_val, best_val=2.0, best_epoch=1, what="EMA")
    assert 0.0 <= acc <= 1.0 and not kept
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    assert choose_recalibrated(model, train.pixels, ds_val, best_val=-1.0, best_epoch=1, what="EMA")[1]
    after = model.get_weights()
    for i, (got, want) in enumerate(zip(after, before)):
        if i in moving:
            assert not np.array_equal(got, want)  # recomputed for these weights
        else:
            np.testing.assert_array_equal(got, want)  # the candidate's own weights, untouched


def test_swa_config_is_checked():
    assert swa_config({}) is None and swa_config({"swa": None}) is None and swa_config({"swa": False}) is None
    assert swa_config({"swa": {}}) == {"start": 0.75, "lr_ratio": 0.1}
    assert swa_config({"swa": {"start": 0.5, "lr_ratio": 1}}) == {"start": 0.5, "lr_ratio": 1.0}
    for bad, what in (({"start": 1.0}, "swa.start"), ({"start": "late"}, "swa.start"), ({"lr_ratio": 0}, "swa.lr_ratio"),
                      ({"begin": 0.5}, "swa="), (0.75, "swa=")):
        with pytest.raises(ConfigError, match=what):
            swa_config({"swa": bad})


def test_schedules_hold_their_floor_after_anneal_frac():
    """With `anneal_frac` (swa's start), both schedules reach their floor at that share of the run and stay there."""
    s = _lr_schedules()
    lr = lambda sched, step: float(keras.ops.convert_to_numpy(sched(step)))  # noqa: E731
    wc = s["WarmupCosine"](1.0, total_steps=100, warmup_steps=10, final_ratio=0.1, anneal_frac=0.75)
    assert lr(wc, 10) == pytest.approx(1.0, rel=1e-5) and 0.1 < lr(wc, 40) < 1.0
    assert [lr(wc, t) for t in (75, 90, 100)] == pytest.approx([0.1] * 3, rel=1e-5)
    oc = s["OneCycle"](1.0, total_steps=100, final_ratio=0.05, anneal_frac=0.5)
    assert lr(oc, 15) == pytest.approx(1.0) and [lr(oc, t) for t in (50, 80)] == pytest.approx([0.05] * 2, rel=1e-5)
    assert type(oc).from_config(oc.get_config()).get_config() == oc.get_config()


def test_recompute_bn_stats_gives_the_mean_over_all_images():
    """The running-average momentum makes the moving mean the exact mean over every image (uneven last batch too)."""
    inp = keras.Input((48, 48, 1))
    bn = keras.layers.BatchNormalization(axis=-1)
    model = keras.Model(inp, bn(inp))
    x = np.random.default_rng(0).integers(0, 256, (70, 48, 48)).astype(np.uint8)
    recompute_bn_stats(model, x, batch_size=32)
    assert float(keras.ops.convert_to_numpy(bn.moving_mean)[0]) == pytest.approx(x.mean(), rel=1e-5)
    batch_vars = [x[i:i + 32].astype(np.float64).var() for i in (0, 32, 64)]
    want = np.average(batch_vars, weights=[32, 32, 6])  # per-batch variances, weighted by batch size
    assert float(keras.ops.convert_to_numpy(bn.moving_variance)[0]) == pytest.approx(want, rel=1e-3)
    assert bn.momentum == 0.99  # restored


def _kernels_at_epoch_end():
    seen: list[np.ndarray] = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(keras.ops.convert_to_numpy(self.model.trainable_variables[0]).copy())

    return seen, Probe()


def test_an_swa_ratio_the_schedule_cannot_use_is_warned_about():
    from ferops.training import swa_ignored_ratio

    for schedule in ("plateau", "constant", None):  # None: the default, plateau
        cfg = {"swa": {"start": 0.75, "lr_ratio": 0.05}, **({"schedule": schedule} if schedule else {})}
        assert "swa.lr_ratio=0.05 is ignored with schedule=" + (schedule or "plateau") in swa_ignored_ratio(cfg)
    assert swa_ignored_ratio({"swa": {"start": 0.75, "lr_ratio": 0.05}, "schedule": "cosine"}) is None
    assert "ignored with schedule=None" in swa_ignored_ratio({"swa": {"lr_ratio": 0.05}, "schedule": None})  # constant
    assert swa_ignored_ratio({"swa": {"start": 0.75}, "schedule": "plateau"}) is None  # the default ratio: nothing set
    assert swa_ignored_ratio({"schedule": "plateau"}) is None


def test_swa_averages_the_tail_and_is_kept_only_if_val_says_so(tiny):
    train, val = tiny
    seen, probe = _kernels_at_epoch_end()
    cfg = {**TINY, "epochs": 4, "swa": {"start": 0.5, "lr_ratio": 0.1}, "class_weights": False}
    res = train_keras(train, val, cfg, seed=0, verbose=0, extra_callbacks=[probe])
    assert res.epochs_run == 4 and res.swa_epochs == [3, 4] and res.swa_val_accuracy is not None
    assert res.history["lr"][2:] == pytest.approx([TINY["lr"] * 0.1] * 2, rel=1e-4)  # the constant-rate tail
    kept = keras.ops.convert_to_numpy(res.train_model.trainable_variables[0])
    if res.swa_used:
        assert res.swa_val_accuracy > max(res.history["val_accuracy"])
        np.testing.assert_allclose(kept, (seen[2] + seen[3]) / 2, rtol=1e-5, atol=1e-7)
        assert res.val_accuracy == pytest.approx(res.swa_val_accuracy, abs=1e-6)
    else:
        assert res.swa_val_accuracy <= max(res.history["val_accuracy"])
        np.testing.assert_array_equal(kept, seen[res.best_epoch - 1])
        assert res.val_accuracy == pytest.approx(max(res.history["val_accuracy"]), abs=1e-6)


def test_choose_swa_keeps_the_average_only_when_it_beats_the_best_val(tiny):
    """Both ways of the val comparison: a beaten best keeps the average (BN statistics recomputed), an unbeaten one
    gets its own weights back, statistics included."""
    from ferops.training import _callbacks, choose_swa

    train, val = tiny
    model = train_keras(train, val, {**TINY, "epochs": 1, "class_weights": False}, seed=0, verbose=0).train_model
    ds_val = make_dataset(val.pixels, val.emotion.astype(int), 64)
    before = [w.copy() for w in model.get_weights()]
    averager = _callbacks()["SwaAverage"](0.5, 2)
    averager.set_model(model)
    averager.mean = [keras.ops.convert_to_numpy(v) * 0.5 for v in model.trainable_variables]
    averager.count, averager.epochs = 2, [1, 2]

    acc, kept = choose_swa(model, averager, train.pixels, ds_val, best_val=2.0, best_epoch=1)  # unbeatable: keep the epoch
    assert 0.0 <= acc <= 1.0 and not kept
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    assert choose_swa(model, averager, train.pixels, ds_val, best_val=-1.0, best_epoch=1)[1]  # any average wins
    for v, m in zip(model.trainable_variables, averager.mean):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), m)
    moved = [not np.array_equal(a, b) for a, b, v in zip(model.get_weights(), before, model.weights) if "moving" in v.path]
    assert moved and all(moved)  # every BN layer's statistics were recomputed for the average


def test_swa_average_survives_a_resume(tiny, tmp_path):
    train, val = tiny
    cfg = {**TINY, "epochs": 4, "swa": {"start": 0.5}, "class_weights": False}

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("killed after epoch 3")

    with pytest.raises(RuntimeError, match="killed"):
        train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=tmp_path / "ckpt", extra_callbacks=[Kill()])
    assert (tmp_path / "ckpt" / "swa.npz").exists()
    res = train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=tmp_path / "ckpt")
    assert res.epochs_run == 4 and res.swa_epochs == [3, 4] and res.swa_val_accuracy is not None


def test_time_budget_config_is_checked():
    assert time_budget_s({}) is None and time_budget_s({"time_budget_min": None}) is None
    assert time_budget_s({"time_budget_min": 2}) == 120.0
    for bad in (0, -1, "soon"):
        with pytest.raises(ConfigError, match="time_budget_min="):
            time_budget_s({"time_budget_min": bad})


def test_budget_epochs_plans_from_the_median_epoch():
    assert budget_epochs(1, 10.0, [10.0], 35.0, 6) == 3  # 25 s left: two more 10-s epochs
    assert budget_epochs(1, 10.0, [10.0], 1000.0, 6) == 6  # `epochs` stays the cap
    assert budget_epochs(3, 50.0, [10.0, 10.0, 30.0], 35.0, 6) == 3  # over budget: stop now, never plan backwards
    assert budget_epochs(3, 120.0, [100.0, 10.0, 10.0], 150.0, 9) == 6  # a slow first (tracing) epoch is outvoted
    # a slow spell of the shared host does not cut the plan (and anneal early) while most epochs ran at 10 s
    assert budget_epochs(8, 110.0, [10.0] * 5 + [20.0] * 3, 200.0, 30) == 17


class _Clock:
    """A simulated clock: every reading is 10 s after the previous one (TimeBudget reads it once per epoch)."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 10.0
        return self.t


def test_time_budget_anneals_on_time_and_stops(tiny, monkeypatch):
    """With 10-s epochs and a 35-s budget, a 6-epoch run is re-planned to 3 and its cosine ends at epoch 3."""
    import ferops.training as training

    monkeypatch.setattr(training, "_clock", _Clock())
    train, val = tiny
    res = train_keras(train, val, {**TINY, "epochs": 6, "time_budget_min": 35 / 60}, seed=0, verbose=0)
    assert res.epochs_run == 3
    assert res.history["planned_epochs"] == [3.0, 3.0, 3.0] and res.history["time_s"] == [10.0, 20.0, 30.0]
    assert res.history["lr"][-1] == pytest.approx(TINY["lr"] * 0.01, rel=1e-3)  # the floor of the re-aimed cosine
    plain = train_keras(train, val, {**TINY, "epochs": 6}, seed=0, verbose=0)
    assert plain.epochs_run == 6 and plain.history["lr"][2] > 10 * res.history["lr"][-1]  # unbudgeted: mid-schedule


def test_steps_per_execution_is_checked():
    assert steps_per_execution({}) == 1 and steps_per_execution({"steps_per_execution": None}) == 1
    assert steps_per_execution({"steps_per_execution": 8}) == 8
    for bad in (0, -2, 2.5, "many", True):
        with pytest.raises(ConfigError, match="steps_per_execution"):
            steps_per_execution({"steps_per_execution": bad})


def test_several_steps_per_execution_train_every_batch_and_anneal_on_time(tiny, monkeypatch):
    """6 batches an epoch in calls of 4 steps: every batch still trains (the last call runs 2), the budget's re-aimed
    cosine reaches its floor, and the run matches one step per call."""
    import ferops.training as training

    train, val = tiny
    cfg = {**TINY, "epochs": 6, "time_budget_min": 35 / 60, "online_aug": {}, "class_weights": False}
    runs = {}
    for spe in (1, 4):
        monkeypatch.setattr(training, "_clock", _Clock())
        runs[spe] = train_keras(train, val, {**cfg, "steps_per_execution": spe}, seed=0, verbose=0)
    one, four = runs[1], runs[4]
    assert math.ceil(len(train) / cfg["batch_size"]) == 6
    assert int(four.train_model.optimizer.iterations.numpy()) == 3 * 6 == int(one.train_model.optimizer.iterations.numpy())
    assert four.epochs_run == 3 and four.history["lr"][-1] == pytest.approx(TINY["lr"] * 0.01, rel=1e-3)
    np.testing.assert_allclose(four.history["loss"], one.history["loss"], rtol=1e-4)


def test_time_budget_counts_the_time_a_resumed_run_spent(tiny, tmp_path, monkeypatch):
    import ferops.training as training

    train, val = tiny
    cfg = {**TINY, "epochs": 6, "time_budget_min": 55 / 60}

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed after epoch 2")

    monkeypatch.setattr(training, "_clock", _Clock())
    with pytest.raises(RuntimeError, match="killed"):
        train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=tmp_path / "ckpt", extra_callbacks=[Kill()])
    monkeypatch.setattr(training, "_clock", _Clock())  # a new process: its clock starts afresh
    res = train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=tmp_path / "ckpt")
    assert res.history["time_s"] == [10.0, 20.0, 30.0, 40.0, 50.0]  # 20 s carried over from the killed run
    assert res.epochs_run == 5 and res.history["planned_epochs"] == [5.0] * 5
    assert res.history["lr"][-1] == pytest.approx(TINY["lr"] * 0.01, rel=1e-3)


def test_a_run_killed_after_it_had_stopped_resumes_to_its_end(tiny, tmp_path, monkeypatch):
    """Killed after the budget (or early stopping) ended training but before the cleanup: the resume trains no
    further epoch, returns the same history, and still reports the run's images/s."""
    import ferops.training as training

    train, val = tiny
    cfg = {**TINY, "epochs": 6, "time_budget_min": 55 / 60}

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 4:  # the budget's last epoch: TimeBudget has set stop_training, TrainState has saved
                raise RuntimeError("killed after epoch 5")

    monkeypatch.setattr(training, "_clock", _Clock())
    with pytest.raises(RuntimeError, match="killed"):
        train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=tmp_path / "ckpt", extra_callbacks=[Kill()])
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["stopped"] is True

    seen = _EpochsSeen()

    monkeypatch.setattr(training, "_clock", _Clock())
    res = train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=tmp_path / "ckpt", extra_callbacks=[seen])
    assert seen.epochs == []  # the old code trained a sixth epoch here
    assert res.epochs_run == 5 and not (tmp_path / "ckpt").exists()
    assert res.images_per_s > 0 and 1 <= res.best_epoch <= 5


def test_weight_decay_can_spare_norm_scales_and_biases():
    """`decay_norm_and_bias: false`: AdamW decays kernels only; BN gamma/beta and biases keep their values."""
    layers = keras.layers
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3), layers.BatchNormalization(), layers.Dense(2)])
    for spare in (False, True):
        opt = make_optimizer({"optimizer": "adamw", "weight_decay": 0.5, "decay_norm_and_bias": not spare}, 0.1)
        decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
        kernels = {v.path for v in model.trainable_variables if v.name == "kernel"}
        assert decayed == (kernels if spare else {v.path for v in model.trainable_variables})


def test_a_run_killed_after_fit_returned_does_not_train_again(tiny, tmp_path, monkeypatch):
    """Killed after `fit` returned but before the checkpoint's cleanup (here in SWA's statistics pass and val check):
    the resume trains no epoch again — BackupAndRestore must not delete its backup at the end of `fit`, or the
    rerun starts from epoch 1 (and a resumed MLflow run gets every epoch twice)."""
    import ferops.training as training

    train, val = tiny
    cfg, ckpt = {**TINY, "epochs": 4, "swa": {"start": 0.5}, "class_weights": False}, tmp_path / "ckpt"
    real = training.choose_swa

    def killed(*args, **kwargs):
        raise RuntimeError("killed after fit")

    monkeypatch.setattr(training, "choose_swa", killed)
    with pytest.raises(RuntimeError, match="killed after fit"):
        train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=ckpt)
    monkeypatch.setattr(training, "choose_swa", real)

    seen = _EpochsSeen()

    res = train_keras(train, val, cfg, seed=0, verbose=0, checkpoint_dir=ckpt, extra_callbacks=[seen])
    assert seen.epochs == []  # the old code trained all four epochs again
    assert res.epochs_run == 4 and res.swa_epochs == [3, 4] and not ckpt.exists()


@pytest.mark.parametrize(("epoch", "cut"), [(2, "weights"), (1, "weights"), (2, "metadata")])
def test_a_run_killed_while_writing_its_weights_backup_resumes(tiny, tmp_path, monkeypatch, epoch, cut):
    """Killed in the middle of writing epoch `epoch`'s backup (written in place; the weights first, then the
    metadata): the resume falls back to the epoch before — at epoch 1, to a fresh start — instead of failing on every
    rerun (h5py's OSError for half a weights file; a JSONDecodeError for a truncated metadata file)."""
    from pathlib import Path

    train, val = tiny
    orig, calls = keras.callbacks.BackupAndRestore._save_model, []

    def save(self):
        calls.append(1)
        meta = Path(self._training_metadata_path)
        before = meta.read_text() if meta.exists() else None
        orig(self)
        if len(calls) == epoch:
            if cut == "weights":  # half the weights file written, the metadata not yet
                weights = Path(self._weights_path)
                weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
                if before is None:
                    meta.unlink()
                else:
                    meta.write_text(before)
            else:  # the weights written, the metadata file opened (truncated) but not yet written
                meta.write_text("")
            raise RuntimeError("killed while saving the backup")

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "_save_model", save)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed while saving"):
        train_keras(train, val, TINY, seed=0, verbose=0, checkpoint_dir=ckpt)
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "_save_model", orig)

    seen = _EpochsSeen()

    res = train_keras(train, val, TINY, seed=0, verbose=0, checkpoint_dir=ckpt, extra_callbacks=[seen])
    assert seen.epochs == list(range(epoch - 1, 3))  # epoch `epoch` again, from the epoch before's weights
    assert res.epochs_run == 3 and len(res.history["val_accuracy"]) == 3 and not ckpt.exists()


@pytest.mark.parametrize("at", [1, 2])
def test_a_run_killed_between_its_backup_and_state_saves_keeps_its_history_in_step(tiny, tmp_path, monkeypatch, at):
    """Killed after epoch `at`'s weights backup was saved but before TrainState saved its history: that epoch is
    trained again, so the history has one row per epoch (the old code resumed after it: its row missing, every
    later row an epoch off — best_epoch, epochs_run and the curves with it)."""
    import ferops.training as training

    train, val = tiny
    cls = training._callbacks()["TrainState"]
    orig = cls.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        if epoch == at - 1:
            raise RuntimeError("killed before the state was saved")
        orig(self, epoch, logs)

    monkeypatch.setattr(cls, "on_epoch_end", on_epoch_end)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="killed before"):
        train_keras(train, val, TINY, seed=0, verbose=0, checkpoint_dir=ckpt)
    monkeypatch.setattr(cls, "on_epoch_end", orig)

    seen = _EpochsSeen()

    res = train_keras(train, val, TINY, seed=0, verbose=0, checkpoint_dir=ckpt, extra_callbacks=[seen])
    assert seen.epochs == list(range(at - 1, 3))  # epoch `at` again
    assert res.epochs_run == 3 and all(len(v) == 3 for v in res.history.values())
