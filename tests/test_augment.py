"""The augmentation with the steps of LDNet's code: hand-checkable cases and the draws' statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esa_tutorial.data import (
    LDNET_RECIPE,
    Augmented,
    AugmentParams,
    AugmentRecipe,
    SyntheticPolyps,
    augment_pair,
)


def _pair(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric image (distinct values) and an L-shaped mask, so every flip and turn shows."""
    image = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    mask[2:10, 3:6] = True
    mask[8:10, 3:12] = True
    return image, mask


# Same size in and out and no crop slack: only the step under test changes the pair.
IDENTITY = AugmentRecipe(resize=16, crop=16)


def test_horizontal_flip_mirrors_exactly() -> None:
    image, mask = _pair()
    out_image, out_mask = IDENTITY.apply(image, mask, AugmentParams(hflip=True))
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])


def test_vertical_flip_mirrors_exactly() -> None:
    image, mask = _pair()
    out_image, out_mask = IDENTITY.apply(image, mask, AugmentParams(vflip=True))
    np.testing.assert_array_equal(out_image, image[::-1])
    np.testing.assert_array_equal(out_mask, mask[::-1])


@pytest.mark.parametrize("angle, turns", [(90.0, 1), (-90.0, -1)])
def test_rotation_by_a_right_angle_is_a_quarter_turn(angle: float, turns: int) -> None:
    """Counter-clockwise for positive angles, as torchvision's rotate in LDNet's code."""
    image, mask = _pair()
    out_image, out_mask = IDENTITY.apply(image, mask, AugmentParams(angle=angle))
    np.testing.assert_allclose(out_image, np.rot90(image, turns, axes=(0, 1)), atol=1e-6)
    np.testing.assert_array_equal(out_mask, np.rot90(mask, turns, axes=(0, 1)))


def test_rotation_with_probability_forced() -> None:
    rng = np.random.default_rng(1)
    always = AugmentRecipe(resize=16, crop=16, p_rotate=1.0, p_hflip=0, p_vflip=0, p_zoom=0)
    never = AugmentRecipe(resize=16, crop=16, p_rotate=0.0, p_hflip=0, p_vflip=0, p_zoom=0)
    angles = [always.draw(rng).angle for _ in range(200)]
    assert all(a is not None and -90 <= a <= 90 for a in angles)
    assert len(set(angles)) == 200  # a continuous angle, not multiples of 90
    assert all(never.draw(rng).angle is None for _ in range(50))


def test_a_small_rotation_keeps_the_centre_and_fills_corners_with_zero() -> None:
    image = np.ones((21, 21, 3), dtype=np.float32)
    mask = np.ones((21, 21), dtype=bool)
    out_image, out_mask = AugmentRecipe(resize=21, crop=21).apply(image, mask, AugmentParams(angle=45.0))
    assert out_mask[10, 10] and out_image[10, 10, 0] == pytest.approx(1.0)
    assert not out_mask[0, 0] and out_image[0, 0, 0] == 0.0


def test_crop_is_last_and_of_the_crop_size() -> None:
    image, mask = _pair(20)
    recipe = AugmentRecipe(resize=20, crop=12)
    out_image, out_mask = recipe.apply(image, mask, AugmentParams(top=3, left=5))
    assert out_image.shape == (12, 12, 3) and out_mask.shape == (12, 12)
    np.testing.assert_array_equal(out_image, image[3:15, 5:17])
    np.testing.assert_array_equal(out_mask, mask[3:15, 5:17])
    with pytest.raises(ValueError, match=r"crop corner \(9, 0\) does not fit a 12 crop of 20"):
        recipe.apply(image, mask, AugmentParams(top=9))


def test_zoom_out_pads_with_zero_and_zoom_in_keeps_the_centre() -> None:
    image = np.ones((20, 20, 3), dtype=np.float32)
    mask = np.ones((20, 20), dtype=bool)
    recipe = AugmentRecipe(resize=20, crop=20)
    small_image, small_mask = recipe.apply(image, mask, AugmentParams(zoom=0.9))  # 18x18 in the middle
    assert small_mask.sum() == 18 * 18 and not small_mask[0].any() and small_mask[1:19, 1:19].all()
    assert small_image[0, 0, 0] == 0.0
    big_image, big_mask = recipe.apply(image, mask, AugmentParams(zoom=1.1))
    assert big_mask.all() and np.allclose(big_image, 1.0)


def test_sizes_of_ldnets_recipe_and_the_scaled_one() -> None:
    assert (LDNET_RECIPE.resize, LDNET_RECIPE.crop) == (256, 224)
    assert (LDNET_RECIPE.p_hflip, LDNET_RECIPE.p_vflip, LDNET_RECIPE.p_rotate, LDNET_RECIPE.p_zoom) == (0.5,) * 4
    assert (LDNET_RECIPE.max_angle, LDNET_RECIPE.zoom_range) == (90.0, (0.9, 1.1))
    assert AugmentRecipe.for_size(224) == LDNET_RECIPE
    small = AugmentRecipe.for_size(64)
    assert (small.resize, small.crop) == (73, 64)
    image, mask = augment_pair(*_pair(50), np.random.default_rng(0), small)
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64)


def test_draws_follow_the_recipes_probabilities() -> None:
    rng = np.random.default_rng(0)
    draws = [LDNET_RECIPE.draw(rng) for _ in range(4000)]
    for name in ("hflip", "vflip"):
        assert np.mean([getattr(d, name) for d in draws]) == pytest.approx(0.5, abs=0.03)
    angles = [d.angle for d in draws if d.angle is not None]
    zooms = [d.zoom for d in draws if d.zoom is not None]
    assert len(angles) / 4000 == pytest.approx(0.5, abs=0.03) and len(zooms) / 4000 == pytest.approx(0.5, abs=0.03)
    assert -90 <= min(angles) < -85 and 85 < max(angles) <= 90
    assert 0.9 <= min(zooms) < 0.91 and 1.09 < max(zooms) <= 1.1
    corners = [d.top for d in draws]
    assert min(corners) == 0 and max(corners) == 32


def test_mask_stays_binary_and_the_pair_stays_aligned() -> None:
    """An image equal to its mask comes out equal to it wherever the image is pure black or white."""
    _, mask = _pair(40)
    image = np.repeat(mask[..., None].astype(np.float32), 3, axis=2)
    recipe = AugmentRecipe.for_size(32)
    for seed in range(10):
        out_image, out_mask = recipe(image, mask, np.random.default_rng(seed))
        assert out_mask.dtype == bool
        pure = (out_image[..., 0] == 0) | (out_image[..., 0] == 1)
        np.testing.assert_array_equal(out_image[..., 0][pure] == 1, out_mask[pure])


def test_numpy_and_torch_generators_reproduce() -> None:
    image, mask = _pair(30)
    recipe = AugmentRecipe.for_size(24)
    for make in (lambda: np.random.default_rng(5), lambda: torch.Generator().manual_seed(5)):
        a, b = recipe(image, mask, make()), recipe(image, mask, make())
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator or a torch.Generator"):
        recipe(image, mask, 5)  # type: ignore[arg-type]


def test_bad_recipes() -> None:
    with pytest.raises(ValueError, match="0 < crop <= resize"):
        AugmentRecipe(resize=10, crop=20)
    with pytest.raises(ValueError, match="p_zoom must be a probability"):
        AugmentRecipe(p_zoom=1.5)


def test_augmented_synthetic_polyps_scaled_recipe() -> None:
    ds = Augmented(SyntheticPolyps(4, size=64, seed=0), AugmentRecipe.for_size(64), seed=1)
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    again = Augmented(SyntheticPolyps(4, size=64, seed=0), AugmentRecipe.for_size(64), seed=1)[0]
    torch.testing.assert_close(again, (image, mask), rtol=0, atol=0)
