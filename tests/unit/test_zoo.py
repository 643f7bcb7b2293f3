"""Keras model zoo: shapes, sizes, raw-pixel input, train-only augmentation, .keras round trip."""

from __future__ import annotations

import numpy as np
import pytest

import keras

from ferops.config import deep_merge  # noqa: E402
from ferops.errors import ConfigError  # noqa: E402
from ferops.models import zoo  # noqa: E402

AUG = {"hflip": True, "rotate_deg": 10, "translate": 0.1, "zoom": 0.1, "contrast": 0.1, "crop": 44, "erasing": 0.5}
SMALL = {
    "dnn": {"arch": "dnn", "hidden": [500, 300, 100], "dropout": 0.3},
    "cnn": {"arch": "cnn", "filters": [32, 64], "dense": 128, "dropout": 0.2},
    "vgg": {"arch": "vgg", "blocks": [[32, 32], [64, 64], [128, 128]], "dense": 256, "dropout": 0.4},
    "resnet": {"arch": "resnet", "stages": [2, 2, 2, 2], "widths": [32, 64, 128, 256], "stem_stride": 1, "stem_pool": True},
    "mini_xception": {"arch": "mini_xception"},
}
PARAM_RANGES = {"dnn": (0.8e6, 2e6), "cnn": (0.3e6, 2e6), "vgg": (0.3e6, 3e6), "resnet": (1.5e6, 5e6),
                "mini_xception": (40e3, 80e3)}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 48, 48, 1)).astype("float32")


def _trained_looking_bn(model) -> list:
    """Give every BN layer trained-looking statistics (γ, σ² in [0.5, 2]; β, μ ~ N(0, 1)) so folding is tested for real."""
    rng = np.random.default_rng(1)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in bns:
        bn.set_weights([rng.uniform(0.5, 2, w.shape) if i in (0, 3) else rng.normal(0, 1, w.shape)
                        for i, w in enumerate(bn.get_weights())])
    return bns


@pytest.mark.parametrize("arch", list(SMALL))
def test_each_arch_gives_softmax_over_7_classes_with_sane_size(arch, pixels):
    model = zoo.build_model({**SMALL[arch], "online_aug": AUG}, seed=0)
    p = model.predict(pixels, verbose=0)
    assert p.shape == (6, 7)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    lo, hi = PARAM_RANGES[arch]
    assert lo <= model.count_params() <= hi, f"{arch}: {model.count_params()} params"
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"  # softmax stays float32 under mixed precision


def test_resnet_expresses_report2_elu_3463_and_bottleneck():
    cfg = {"arch": "resnet", "stages": [3, 4, 6, 3], "widths": [16, 32, 64, 128], "activation": "elu",
           "stem_stride": 2, "stem_pool": False, "online_aug": {"crop": 0}}
    model = zoo.build_model(cfg)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 16
    acts = {layer.get_config()["activation"] for layer in model.layers if isinstance(layer, keras.layers.Activation)}
    assert acts == {"elu"}
    # stride-2 at the first block of stages 2..4: 48 → 24 (stem) → 12 → 6 → 3
    assert model.get_layer("s3b2_add").output.shape[1:3] == (3, 3)
    bott = zoo.build_model({**cfg, "bottleneck": True, "activation": "relu"})
    assert bott.get_layer("s0b0_c_conv").kernel.shape[:2] == (1, 1)


def test_unknown_arch_and_bad_crop_are_config_errors():
    with pytest.raises(ConfigError, match="arch"):
        zoo.build_model({"arch": "transformer"})
    with pytest.raises(ConfigError, match="crop"):
        zoo.build_model({"arch": "cnn", "online_aug": {"crop": 60}})


def test_raw_pixels_are_scaled_inside_and_inference_is_deterministic(pixels):
    model = zoo.build_model({**SMALL["cnn"], "online_aug": AUG}, seed=1)
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)
    a, b = model.predict(pixels, verbose=0), model.predict(pixels, verbose=0)
    np.testing.assert_array_equal(a, b)
    # augmentation is live in training mode only
    t1 = keras.ops.convert_to_numpy(model(pixels, training=True))
    assert not np.allclose(t1, a)


def test_crop_layer_random_windows_in_training_centre_at_inference():
    layer = zoo._layers()["RandomCropOrCenter"](40, seed=3)
    x = np.arange(2 * 48 * 48, dtype="float32").reshape(2, 48, 48, 1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x[:, 4:44, 4:44])
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    assert out.shape == (2, 40, 40, 1)
    for i in range(2):  # each output is some 40x40 window of its own input
        top, left = divmod(int(out[i, 0, 0, 0] - x[i, 0, 0, 0]), 48)
        np.testing.assert_array_equal(out[i], x[i, top:top + 40, left:left + 40])


def test_random_erasing_changes_a_rectangle_in_training_only():
    layer = zoo._layers()["RandomErasing"](1.0, seed=0)
    x = np.full((4, 48, 48, 1), 100.0, dtype="float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    changed = (out != x).mean(axis=(1, 2, 3))
    assert np.all(changed > 0.005) and np.all(changed < 0.3)


def test_keras_round_trip_in_safe_mode_for_training_and_inference_models(tmp_path, pixels):
    cfg = {**SMALL["mini_xception"], "online_aug": AUG}
    model = zoo.build_model(cfg, seed=0)
    model.save(tmp_path / "train.keras")
    again = keras.models.load_model(tmp_path / "train.keras")  # safe_mode=True by default
    np.testing.assert_array_equal(again.predict(pixels, verbose=0), model.predict(pixels, verbose=0))

    clean = zoo.inference_model(model, cfg)
    custom = tuple(zoo.custom_objects().values())
    assert not any(isinstance(layer, custom) for layer in clean.layers)  # built-in layers only: loads anywhere
    np.testing.assert_allclose(clean.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6)
    clean.save(tmp_path / "clean.keras")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "clean.keras").predict(pixels, verbose=0),
                                  clean.predict(pixels, verbose=0))
    assert zoo.crop_size(clean) == zoo.crop_size(model) == 44


def test_aug_strength_scales_magnitudes_and_caps_erasing_probability():
    aug = zoo.aug_config({"online_aug": {"rotate_deg": 10, "erasing": 0.6}, "aug_strength": 2.0})
    assert aug["rotate_deg"] == 20 and aug["erasing"] == 1.0 and aug["hflip"] is True


def test_base_width_doubles_per_stage():
    assert zoo.resnet_widths({"stages": [2, 2, 2], "base_width": 24}) == [24, 48, 96]
    assert zoo.resnet_widths(deep_merge({"stages": [1, 1]}, {"widths": [8, 16]})) == [8, 16]


def test_random_affine_is_identity_at_zero_and_moves_content_in_training_only():
    affine = zoo._layers()["RandomAffine"]
    ramp = np.tile(np.arange(48, dtype="float32") * 5.0, (4, 48, 1))[..., None]  # brightness grows left → right
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(affine(0, 0, 0, seed=0)(ramp, training=True)), ramp)
    layer = affine(15, 0.1, 0.15, seed=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(ramp, training=False)), ramp)
    out = keras.ops.convert_to_numpy(layer(ramp, training=True))
    assert out.shape == ramp.shape and not np.allclose(out, ramp)
    assert out.min() >= ramp.min() - 1e-3 and out.max() <= ramp.max() + 1e-3  # edge pixels extend, no black fill
    # A pure shift of a ramp stays a ramp: the mean column slope is unchanged away from the clamped border.
    shifted = keras.ops.convert_to_numpy(affine(0, 0.05, 0, seed=1)(ramp, training=True))
    np.testing.assert_allclose(np.diff(shifted[:, 20, 8:40, 0], axis=1), 5.0, atol=1e-3)


def test_warp_setting_picks_builtin_or_affine_layers_and_rejects_others(pixels):
    aug = {**AUG, "crop": 0, "erasing": 0.0}
    names = lambda m: {layer.name for layer in m.layers}  # noqa: E731
    builtin = zoo.build_model({**SMALL["cnn"], "online_aug": {**aug, "warp": "builtin"}}, seed=0)
    affine = zoo.build_model({**SMALL["cnn"], "online_aug": {**aug, "warp": "affine"}}, seed=0)
    assert {"aug_rotate", "aug_translate", "aug_zoom"} <= names(builtin) and "aug_affine" not in names(builtin)
    assert "aug_affine" in names(affine) and not {"aug_rotate", "aug_translate", "aug_zoom"} & names(affine)
    assert affine.predict(pixels, verbose=0).shape == (6, 7)
    with pytest.raises(ConfigError, match="warp"):
        zoo.build_model({**SMALL["cnn"], "online_aug": {**aug, "warp": "spline"}}, seed=0)


def test_input_norm_image_standardises_each_image_in_both_models(pixels):
    cfg = {"arch": "cnn", "filters": [8], "dense": 8, "input_norm": "image", "online_aug": {"crop": 40}}
    for inference in (False, True):
        model = zoo.build_model(cfg, seed=0, inference=inference)
        probe = keras.Model(model.input, model.get_layer("image_norm").output)
        # brightness and contrast are taken out: a*x+b standardises to the same image as x
        z = keras.ops.convert_to_numpy(probe(pixels * 0.5 + 40.0, training=False))
        np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
        np.testing.assert_allclose(z.std(axis=(1, 2, 3)), 1.0, atol=0.01)  # epsilon 1e-4
        np.testing.assert_allclose(z, keras.ops.convert_to_numpy(probe(pixels, training=False)), atol=2e-2)
    with pytest.raises(ConfigError, match="input_norm"):
        zoo.build_model({**cfg, "input_norm": "global"})


@pytest.mark.parametrize("arch", ["resnet", "mini_xception", "dnn"])
def test_fold_batchnorm_removes_every_bn_and_keeps_the_predictions(arch, pixels):
    model = zoo.build_model({**SMALL[arch], "online_aug": {"crop": 44}}, seed=0, inference=True)
    bns = _trained_looking_bn(model)
    folded = zoo.fold_batchnorm(model)
    assert bns and not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert len(zoo._foldable_pairs(model)) == len(bns)  # every BN here follows a linear conv/dense
    # atol 1e-4: folding reorders float32 sums (1.2e-5 seen on one xdist worker's kernels); a wrong fold is ≫ 1e-3
    np.testing.assert_allclose(folded.predict_on_batch(pixels), model.predict_on_batch(pixels), atol=1e-4)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)  # the input is untouched


def test_fold_batchnorm_leaves_a_bn_that_cannot_fold(pixels):
    inputs = keras.Input((48, 48, 1))
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c")(inputs)  # BN after the ReLU: not linear
    shared = keras.layers.Conv2D(4, 3, padding="same", name="d")(conv)
    y = keras.layers.Add()([keras.layers.BatchNormalization(name="bn1")(conv),
                            keras.layers.BatchNormalization(name="bn2")(shared)])
    model = keras.Model(inputs, keras.layers.Add()([keras.layers.Flatten()(y), keras.layers.Flatten()(shared)]))
    assert zoo._foldable_pairs(model) == {}  # "d" also feeds the Flatten, "c" has a ReLU
    assert zoo.fold_batchnorm(model) is model
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])
    assert zoo.fold_batchnorm(seq) is seq  # a user's Sequential model is served as it is
    shared = keras.layers.Dense(4)
    inputs = keras.Input((4,))
    twice = keras.Model(inputs, keras.layers.BatchNormalization()(shared(shared(inputs))))
    assert zoo.fold_batchnorm(twice) is twice  # a layer called twice: its `input` is ambiguous


def test_fused_batchnorm_trains_like_the_builtin_layer_and_is_optional():
    import tensorflow as tf
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused kernel is TF's")
    fused_cls = zoo.custom_objects()["FusedBatchNormalization"]
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (16, 6, 6, 5)).astype("float32"))
    results = []
    for layer in (keras.layers.BatchNormalization(momentum=0.9), fused_cls(momentum=0.9)):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 5, dtype="float32"))
        layer.beta.assign(np.arange(5, dtype="float32"))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance, layer(x, training=False)])
    (y0, gx0, gg0, gb0, mm0, mv0, _), (y1, gx1, gg1, gb1, mm1, mv1, inf1) = [[np.asarray(t) for t in r] for r in results]
    np.testing.assert_allclose(y1, y0, atol=1e-5)
    for a, b in ((gx1, gx0), (gg1, gg0), (gb1, gb0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mm1, mm0, atol=1e-6)
    n = 16 * 6 * 6  # the fused op feeds the moving variance the unbiased batch variance (as Keras 2 did)
    np.testing.assert_allclose(mv1 - 0.9, (mv0 - 0.9) * n / (n - 1), rtol=1e-4)
    gamma, beta = np.linspace(0.5, 1.5, 5), np.arange(5)
    expected = (np.asarray(x) - mm1) / np.sqrt(mv1 + 1e-3) * gamma + beta  # inference: the built-in maths
    np.testing.assert_allclose(inf1, expected, atol=1e-4)

    cfg = {**SMALL["resnet"], "online_aug": AUG}
    bns = [type(layer) for layer in zoo.build_model(cfg, seed=0).layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and set(bns) == {fused_cls}
    plain = zoo.build_model({**cfg, "fused_batchnorm": False}, seed=0)
    assert {type(layer) for layer in plain.layers if isinstance(layer, keras.layers.BatchNormalization)} == {
        keras.layers.BatchNormalization}


def test_squeeze_excitation_gates_every_residual_branch_and_folds(pixels):
    """`se: r`: each block's branch is scaled per channel by sigmoid gates from its global average (hidden w // r);
    the net stays a plain Keras graph, so BN folding for serving keeps its predictions. Off by default."""
    cfg = {**SMALL["resnet"], "online_aug": {"crop": 44}}
    model = zoo.build_model({**cfg, "se": 16}, seed=0, inference=True)
    gates = [layer for layer in model.layers if layer.name.endswith("_se_gate")]
    assert len(gates) == sum(SMALL["resnet"]["stages"])
    assert model.get_layer("s3b1_se_reduce").kernel.shape == (256, 16)
    assert model.get_layer("s0b0_se_scale").output.shape[1:] == model.get_layer("s0b0_b_bn").output.shape[1:]
    _trained_looking_bn(model)
    folded = zoo.fold_batchnorm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    # atol 1e-4: folding reorders float32 sums (1.2e-5 seen on one xdist worker's kernels); a wrong fold is ≫ 1e-3
    np.testing.assert_allclose(folded.predict_on_batch(pixels), model.predict_on_batch(pixels), atol=1e-4)
    assert not any(layer.name.endswith("_se_gate") for layer in zoo.build_model(cfg, seed=0).layers)
    with pytest.raises(ConfigError, match="se=-4"):
        zoo.build_model({**cfg, "se": -4})


def test_zero_init_residual_starts_every_block_as_the_identity():
    """`zero_init_residual`: each residual branch's last BN starts at gamma 0 (the block outputs act(shortcut));
    every other BN starts at 1, and the option is off by default."""
    cfg = {**SMALL["resnet"], "online_aug": AUG}
    gammas = {layer.name: np.asarray(layer.gamma) for layer in zoo.build_model({**cfg, "zero_init_residual": True}, seed=0).layers
              if isinstance(layer, keras.layers.BatchNormalization)}
    zeroed = {name for name, g in gammas.items() if not g.any()}
    n_blocks = sum(SMALL["resnet"].get("stages", [2, 2, 2, 2]))
    assert len(zeroed) == n_blocks and all(name.endswith("_b_bn") for name in zeroed)
    assert all((g == 1).all() for name, g in gammas.items() if name not in zeroed)
    default = zoo.build_model(cfg, seed=0)
    assert all((np.asarray(layer.gamma) == 1).all() for layer in default.layers
               if isinstance(layer, keras.layers.BatchNormalization))


@pytest.mark.parametrize("aug, match", [
    ({"rotate": 15}, "online_aug.rotate=15: unknown augmentation key — did you mean `rotate_deg`"),
    ({"rotate_deg": "ten"}, r"online_aug.rotate_deg='ten': give a number"),
    ({"hflip": "no"}, "online_aug.hflip='no': use true | false"),
    ({"crop": 44.5}, "online_aug.crop=44.5: give a whole number"),
    ({"erasing": 1.5}, "online_aug.erasing=1.5"),
    ([1, 2], "online_aug=.*give a mapping"),
])
def test_a_bad_online_aug_key_or_value_is_a_config_error_not_silently_ignored(aug, match):
    # a typo'd key was dropped by the merge with the defaults (that augmentation silently off), "no" switched the
    # flip on, and a word ended in a raw ValueError inside check_config
    with pytest.raises(ConfigError, match=match):
        zoo.aug_config({"online_aug": aug})
    from ferops.training import check_config  # the early check before TensorFlow reaches it

    with pytest.raises(ConfigError, match=match):
        check_config({"arch": "resnet", "online_aug": aug})


@pytest.mark.parametrize("cfg, match", [
    ({"arch": "resnet", "stages": 2}, r"stages=2: give a list of whole numbers >= 1"),
    ({"arch": "resnet", "widths": [32, "x", 128, 256]}, r"widths=\[32, 'x', 128, 256\]"),
    ({"arch": "resnet", "stages": [0, 2, 2, 2]}, r"stages=\[0, 2, 2, 2\]"),
    ({"arch": "resnet", "se": "yes"}, "se='yes': give a whole number >= 0"),
    ({"arch": "resnet", "base_width": "wide"}, "base_width='wide'"),
    ({"arch": "dnn", "hidden": 500}, "hidden=500"),
    ({"arch": "vgg", "blocks": [32, 64]}, r"blocks=\[32, 64\]: give one list of conv widths per block"),
    ({"arch": "mini_xception", "module_widths": 16}, "module_widths=16"),
    ({"arch": "cnn", "filters": [8] * 6}, "filters: 6 blocks each halve the 48-px input, down to nothing; use at most 5"),
    ({"arch": "vgg", "blocks": [[8]] * 6, "online_aug": {"crop": 40}}, "blocks: 6 blocks .* 40-px .* at most 5"),
])
def test_a_bad_layer_size_setting_is_a_config_error_naming_the_key(cfg, match):
    # each ended in a raw TypeError/ValueError from the builder (or Keras' "output size would be zero")
    with pytest.raises(ConfigError, match=match):
        zoo.build_model(cfg)


def test_deepest_valid_cnn_still_builds():
    assert zoo.build_model({"arch": "cnn", "filters": [8] * 5}).output.shape == (None, 7)


def test_aug_strength_caps_magnitudes_where_the_keras_layers_end():
    # contrast 0.8 x 1.5 = 1.2 reached RandomContrast, which raised a raw ValueError (factor must be in [0, 1])
    from ferops.hparams import apply_params

    cfg = {"arch": "dnn", "hidden": [8], "online_aug": {"contrast": 0.8, "zoom": 0.9, "translate": 0.9, "rotate_deg": 170}}
    aug = zoo.aug_config({**cfg, "aug_strength": 1.5})
    assert (aug["contrast"], aug["zoom"], aug["translate"], aug["rotate_deg"]) == (1.0, 1.0, 1.0, 180.0)
    zoo.build_model({**cfg, "aug_strength": 1.5, "online_aug": {**cfg["online_aug"], "warp": "builtin"}})
    tuned = apply_params(cfg, {"aug_strength": 1.5})  # the tune trial's path
    assert tuned["online_aug"]["contrast"] == 1.0
    zoo.build_model({**tuned, "online_aug": {**tuned["online_aug"], "warp": "builtin"}})
    with pytest.raises(ConfigError, match=r"online_aug.contrast=1.2: give a number ≥ 0 and ≤ 1"):
        zoo.aug_config({"online_aug": {"contrast": 1.2}})


def test_every_architecture_has_a_small_config_and_a_parameter_range():
    """A new architecture added to the zoo without an entry here would pass the suite untested (builder, shapes,
    parameter count); so would one whose builder is missing."""
    from ferops.models.zoo import ARCHS, BUILDERS

    assert set(SMALL) == set(ARCHS) == set(PARAM_RANGES) == set(BUILDERS)
