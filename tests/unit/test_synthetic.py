"""The synthetic demo faces: deterministic, FER2013-like imbalance and usage, and class-dependent."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.constants import EMOTIONS
from ferops.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def demo():
    return make_synthetic(700, seed=7)


def test_same_seed_same_bytes(demo):
    again = make_synthetic(700, seed=7)
    assert demo.pixels.tobytes() == again.pixels.tobytes()
    assert demo.emotion.tobytes() == again.emotion.tobytes()
    assert demo.usage.tolist() == again.usage.tolist() and demo.source_id.tolist() == again.source_id.tolist()


def test_other_seed_differs(demo):
    assert not np.array_equal(make_synthetic(700, seed=8).pixels, demo.pixels)


def test_canonical_form(demo):
    assert demo.pixels.shape == (700, 48, 48) and demo.pixels.dtype == np.uint8
    assert demo.emotion.dtype == np.int8 and set(demo.emotion.tolist()) == set(range(len(EMOTIONS)))
    assert demo.source_id[0] == "synthetic_0" and len(set(demo.source_id)) == 700
    assert demo.pixels.std() > 20  # not blank


def test_fer2013_like_class_imbalance():
    counts = np.bincount(make_synthetic(2000, seed=1).emotion, minlength=7)
    shares = counts / counts.sum()
    assert counts.sum() == 2000
    assert 0.01 <= shares[1] <= 0.02  # Disgust rare, ~1.5 %
    assert counts.argmax() == 3  # Happy largest
    assert (counts > 0).all()


def test_usage_like_competition(demo):
    usage = {u: int((demo.usage == u).sum()) for u in ("Training", "PublicTest", "PrivateTest")}
    assert sum(usage.values()) == 700
    assert abs(usage["Training"] / 700 - 0.8) < 0.02 and abs(usage["PublicTest"] / 700 - 0.1) < 0.02
    for u in usage:  # every split holds every class, Disgust included
        assert set(demo.emotion[demo.usage == u].tolist()) == set(range(7))


def test_tiny_n_works():
    d = make_synthetic(5, seed=0)
    assert len(d) == 5 and d.pixels.shape == (5, 48, 48)


def test_expression_depends_on_class(demo):
    # Class-mean images differ clearly (mouth/brow/eye geometry), and same-class images vary (pose, light, noise).
    means = np.stack([demo.pixels[demo.emotion == c].astype(float).mean(0) for c in range(7)])
    diffs = [np.abs(means[a] - means[b]).mean() for a in range(7) for b in range(a + 1, 7)]
    assert min(diffs) > 1.0
    happy = demo.pixels[demo.emotion == 3].astype(float)
    assert np.abs(happy[0] - happy[1]).mean() > 10
