import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigma_ray.infra.checks import ConfigError
from sigma_ray.infra.config import from_dict
from sigma_ray.method.masking import MaskConfig, MaskGenerator, num_masked, random_mask, token_grid, tube_mask


def test_paper_counts():
    grid = token_grid(16, 224, 224)
    assert grid == (8, 14, 14)
    mask = tube_mask(grid, 0.9, np.random.default_rng(0))
    assert mask.shape == (1568,) and mask.dtype == bool
    assert mask.sum() == 1408 and (~mask).sum() == 160  # int(0.9 * 196) = 176 per slice


@settings(max_examples=50, deadline=None)
@given(t=st.integers(1, 8), h=st.integers(1, 14), w=st.integers(1, 14), ratio=st.floats(0.05, 0.95),
       seed=st.integers(0, 2**32 - 1))
def test_tube_mask_repeats_one_spatial_pattern_with_exact_counts(t, h, w, ratio, seed):
    per_slice = int(ratio * h * w)
    if per_slice == 0 or per_slice == h * w:
        with pytest.raises(ConfigError):
            tube_mask((t, h, w), ratio, np.random.default_rng(seed))
        return
    mask = tube_mask((t, h, w), ratio, np.random.default_rng(seed)).reshape(t, h * w)
    assert (mask == mask[0]).all()
    assert mask.sum(axis=1).tolist() == [per_slice] * t


@settings(max_examples=50, deadline=None)
@given(ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**32 - 1))
def test_random_mask_exact_count(ratio, seed):
    grid = (4, 6, 6)
    mask = random_mask(grid, ratio, np.random.default_rng(seed))
    assert mask.sum() == int(ratio * 144) == num_masked(grid, ratio, "random")


def test_random_mask_differs_across_time():
    mask = random_mask((8, 14, 14), 0.9, np.random.default_rng(1)).reshape(8, -1)
    assert not (mask == mask[0]).all()


@pytest.mark.parametrize("kind", ["tube", "random"])
def test_seeded_and_batches_stack(kind):
    gen = MaskGenerator((8, 4, 4), MaskConfig(kind=kind, ratio=0.75))
    a = gen.batch(6, np.random.default_rng(7))
    b = gen.batch(6, np.random.default_rng(7))
    c = gen.batch(6, np.random.default_rng(8))
    assert a.shape == (6, 128) and (a == b).all() and not (a == c).all()
    assert (a.sum(1) == gen.num_masked).all()


@pytest.mark.parametrize("bad", [{"ratio": 0.0}, {"ratio": 1.0}, {"ratio": 1.5}, {"kind": "block"}])
def test_config_rejects_out_of_range(bad):
    field = next(iter(bad))
    with pytest.raises(ConfigError, match=field):
        from_dict(MaskConfig, bad)


def test_grid_requires_divisible_sizes():
    with pytest.raises(ConfigError, match="frames"):
        token_grid(15, 224, 224)
    with pytest.raises(ConfigError, match="width"):
        token_grid(16, 224, 100)
