"""seratio.augment: flip and edge-filled shift, checked against a per-pixel definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seratio.augment import augment_batch, to_float, view_batch
from seratio.errors import SeratioError
from seratio.recipes import TTA_VIEWS

H = W = 32


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coordinate_batch(b: int, seed: int = 0) -> torch.Tensor:
    """Channel 0 holds x, channel 1 holds y, channel 2 is noise: each output pixel reveals its source."""
    images = torch.empty(b, 3, H, W, dtype=torch.uint8)
    images[:, 0] = torch.arange(W, dtype=torch.uint8)
    images[:, 1] = torch.arange(H, dtype=torch.uint8)[:, None]
    images[:, 2] = torch.randint(0, 256, (b, H, W), generator=seeded(seed), dtype=torch.uint8)
    return images


def recover(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flipped, dy, dx) per image, read off interior pixels of an augmented coordinate batch."""
    xs = out[:, 0, 16].long()
    flipped = (xs[:, 20] < xs[:, 10]).numpy()
    centre = xs[:, 16].numpy()
    dx = np.where(flipped, centre - 15, 16 - centre)  # unflipped: 16 - dx; flipped: 31 - (16 - dx)
    dy = 16 - out[:, 1, 16, 16].long().numpy()
    return flipped, dy, dx


def reference(images: torch.Tensor, flipped: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> torch.Tensor:
    """The documented definition, pixel by pixel: out(y, x) = mirror?(in)(clamp(y - dy), clamp(x - dx))."""
    src = images.numpy()
    b, _, h, w = src.shape
    out = np.empty_like(src)
    for i in range(b):
        img = src[i, :, :, ::-1] if flipped[i] else src[i]
        for y in range(h):
            for x in range(w):
                out[i, :, y, x] = img[:, min(max(y - dy[i], 0), h - 1), min(max(x - dx[i], 0), w - 1)]
    return torch.from_numpy(out)


def test_shape_dtype_and_device_are_kept() -> None:
    images = torch.randint(0, 256, (16, 3, H, W), generator=seeded(), dtype=torch.uint8)
    out = augment_batch(images, seeded())
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
    assert out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize("view", sorted({v for views in TTA_VIEWS.values() for v in views}))
def test_every_test_time_view_matches_the_per_pixel_definition(view: tuple[bool, int, int]) -> None:
    images = coordinate_batch(3)
    flip, dy, dx = view
    expected = reference(images, np.full(3, flip), np.full(3, dy), np.full(3, dx))
    assert torch.equal(view_batch(images, flip, dy, dx), expected)


def test_matches_the_per_pixel_definition() -> None:
    images = coordinate_batch(64)
    out = augment_batch(images, seeded(7))
    flipped, dy, dx = recover(out)
    assert set(dx) <= set(range(-3, 4)) and set(dy) <= set(range(-3, 4))
    assert flipped.any() and not flipped.all()
    assert torch.equal(out, reference(images, flipped, dy, dx))


def test_shifts_cover_minus3_to_3_uniformly_and_independently() -> None:
    n = 7_000
    _, dy, dx = recover(augment_batch(coordinate_batch(n), seeded(1), flip_p=0.0))
    bound = 5 * np.sqrt(n * (1 / 7) * (6 / 7))  # 5 binomial standard deviations
    for d in (dx, dy):
        counts = np.bincount(d + 3, minlength=7)
        assert len(counts) == 7 and np.all(np.abs(counts - n / 7) < bound), counts
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 49


@pytest.mark.parametrize("flip_p", [0.5, 0.2])
def test_flip_rate(flip_p: float) -> None:
    n = 4_000
    images = torch.randint(0, 256, (n, 3, H, W), generator=seeded(), dtype=torch.uint8)
    out = augment_batch(images, seeded(2), flip_p=flip_p, max_shift=0)
    mirrored = (out == images.flip(3)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert bool((mirrored ^ kept).all())  # each image is exactly one of the two
    assert abs(int(mirrored.sum()) - n * flip_p) < 5 * np.sqrt(n * flip_p * (1 - flip_p))


def test_shifted_in_border_replicates_the_edge() -> None:
    """Same seed and batch size draw the same shifts, so a coordinate batch tells us what noise got."""
    b = 2_000
    _, dy, dx = recover(augment_batch(coordinate_batch(b), seeded(3), flip_p=0.0))
    images = torch.randint(0, 256, (b, 3, H, W), generator=seeded(4), dtype=torch.uint8)
    out = augment_batch(images, seeded(3), flip_p=0.0)
    right, left = np.flatnonzero((dx == 3) & (dy == 0)), np.flatnonzero((dx == -3) & (dy == 0))
    down = np.flatnonzero((dy == 3) & (dx == 0))
    assert len(right) and len(left) and len(down)
    for i in right:
        assert torch.equal(out[i, :, :, :4], images[i, :, :, :1].expand(3, H, 4))
        assert torch.equal(out[i, :, :, 3:], images[i, :, :, :-3])
    for i in left:
        assert torch.equal(out[i, :, :, -4:], images[i, :, :, -1:].expand(3, H, 4))
    for i in down:
        assert torch.equal(out[i, :, :4, :], images[i, :, :1, :].expand(3, 4, W))


def test_same_seed_same_batch_other_seed_differs() -> None:
    images = torch.randint(0, 256, (64, 3, H, W), generator=seeded(), dtype=torch.uint8)
    assert torch.equal(augment_batch(images, seeded(5)), augment_batch(images, seeded(5)))
    assert not torch.equal(augment_batch(images, seeded(5)), augment_batch(images, seeded(6)))


def test_disabled_is_identity_and_always_flip_is_a_mirror() -> None:
    images = torch.randint(0, 256, (32, 3, H, W), generator=seeded(), dtype=torch.uint8)
    assert torch.equal(augment_batch(images, seeded(), flip_p=0.0, max_shift=0), images)
    assert torch.equal(augment_batch(images, seeded(), flip_p=1.0, max_shift=0), images.flip(3))


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 5),
    c=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    max_shift=st.integers(0, 9),
    flip_p=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_any_shape_and_shift_matches_the_definition(
    b: int, c: int, h: int, w: int, max_shift: int, flip_p: float, seed: int
) -> None:
    """Shifts larger than the image must still clamp to the border; the draw order is documented."""
    images = torch.randint(0, 256, (b, c, h, w), generator=seeded(seed), dtype=torch.uint8)
    out = augment_batch(images, seeded(seed), flip_p=flip_p, max_shift=max_shift)
    g = seeded(seed)
    flipped = (torch.rand(b, generator=g) < flip_p).numpy()
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, b), generator=g).numpy()
    assert torch.equal(out, reference(images, flipped, dy, dx))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"flip_p": 1.5}, SeratioError, "flip_p 1.5"),
        ({"flip_p": -0.1}, SeratioError, "flip_p -0.1"),
        ({"max_shift": -1}, SeratioError, "max_shift -1"),
        ({"max_shift": 2.5}, SeratioError, "max_shift 2.5"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, error: type, message: str) -> None:
    images = torch.zeros(2, 3, H, W, dtype=torch.uint8)
    with pytest.raises(error, match=message):
        augment_batch(images, seeded(), **kwargs)


def test_non_uint8_images_are_rejected() -> None:
    with pytest.raises(SeratioError, match="uint8"):
        augment_batch(torch.zeros(2, 3, H, W), seeded())
    with pytest.raises(SeratioError, match="uint8"):
        augment_batch(torch.zeros(3, H, W, dtype=torch.uint8), seeded())


def test_to_float_scales_to_unit_range() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    assert torch.equal(to_float(images), torch.tensor([0.0, 0.2, 1.0]).view(1, 1, 1, 3))
    assert to_float(images, torch.float64).dtype == torch.float64
    with pytest.raises(SeratioError, match="uint8"):
        to_float(to_float(images))
