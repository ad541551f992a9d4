"""Model family: exact sizes from the paper's architecture and clear errors for bad ratios."""

from __future__ import annotations

import pytest
import torch

from seratio.architecture import ModelConfig, count_macs, count_params, parse_rr, se_hidden
from seratio.errors import SeratioError
from seratio.models import build_model, kernel_parameters


def se_params(rr: tuple[int | None, ...], blocks: int = 8) -> int:
    """Closed form from DESIGN section 3: each SE block adds 2*c*h + h + c."""
    return sum(blocks * (2 * c * (c // r) + c // r + c) for c, r in zip((16, 32, 64), rr) if r is not None)


@pytest.mark.parametrize(
    ("rr", "params"),
    [
        ((None, None, None), 758_554),
        ((8, 2, 16), 772_426),
        ((16, 16, 16), 758_554 + 6_328),
        ((8, 8, 8), 758_554 + se_params((8, 8, 8))),
        ((2, 2, 2), 758_554 + se_params((2, 2, 2))),
    ],
)
def test_resnet52_parameter_counts(rr: tuple[int | None, ...], params: int) -> None:
    assert count_params(ModelConfig(depth=50, rr=rr)) == params


@pytest.mark.parametrize("config", [
    ModelConfig(depth=8), ModelConfig(depth=8, rr=(1, 32, 64), num_classes=100), ModelConfig(depth=50, rr=(8, 2, 16)),
    ModelConfig(depth=110, rr=(3, None, 5), num_classes=2),
], ids=str)
def test_parameter_count_is_the_built_models(config: ModelConfig) -> None:
    with torch.device("meta"):
        model = build_model(config)
    assert count_params(config) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_se_hidden_is_floor_without_rounding() -> None:
    assert se_hidden(ModelConfig(rr=(8, 2, 16))) == [2, 16, 4]
    assert se_hidden(ModelConfig(rr=(3, 5, 7))) == [5, 6, 9]
    assert se_hidden(ModelConfig(rr=(None, 4, None))) == [None, 8, None]


def test_macs_of_plain_resnet52_match_hand_count() -> None:
    # stem + 3 stages of 8 blocks (two 3x3 convs each) + 2 projections + FC, per image.
    stem = 32 * 32 * 9 * 3 * 16
    stage1 = 8 * 32 * 32 * 9 * (16 * 16 * 2)
    stage2 = 16 * 16 * 9 * (16 * 32 + 32 * 32) + 7 * 16 * 16 * 9 * 32 * 32 * 2 + 16 * 16 * 16 * 32
    stage3 = 8 * 8 * 9 * (32 * 64 + 64 * 64) + 7 * 8 * 8 * 9 * 64 * 64 * 2 + 8 * 8 * 32 * 64
    assert count_macs(ModelConfig(depth=50)) == stem + stage1 + stage2 + stage3 + 64 * 10
    se_fc = 8 * 2 * (16 * 2 + 32 * 16 + 64 * 4)
    assert count_macs(ModelConfig(depth=50, rr=(8, 2, 16))) == count_macs(ModelConfig(depth=50)) + se_fc


def test_forward_shape_and_cifar100_head() -> None:
    model = build_model(ModelConfig(depth=8, rr=(4, 4, 4), num_classes=100))
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 100)


def test_kernels_exclude_bn_and_biases() -> None:
    model = build_model(ModelConfig(depth=8, rr=(2, 2, 2)))
    kernels = kernel_parameters(model)
    assert all(p.dim() in (2, 4) for p in kernels)
    # depth 8: stem + 3 blocks x 2 convs + 2 projections = 9 convs; 3 SE x 2 FC + classifier = 7 FCs.
    assert len(kernels) == 16


def test_he_normal_init_scale() -> None:
    torch.manual_seed(0)
    conv = build_model(ModelConfig(depth=50)).blocks[-1].conv2.weight
    expected = (2 / (64 * 9)) ** 0.5
    assert conv.std().item() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("32,2,16", "stage 1 has 16 channels; ratio 32"),
        ("8,64,16", "stage 2 has 32 channels; ratio 64"),
        ("8,2,128", "stage 3 has 64 channels; ratio 128"),
        ("0,2,2", "stage 1: reduction ratio 0 is < 1"),
        ("8,-2,2", "stage 2: reduction ratio -2 is < 1"),
        ("8,2,2.5", "stage 3: reduction ratio '2.5' is not an integer"),
        ("8,x,2", "stage 2: reduction ratio 'x' is not an integer"),
        ("8,2", "give 2 stages; the model has 3"),
        ("8,2,16,4", "give 4 stages; the model has 3"),
    ],
)
def test_bad_ratios_name_stage_and_value(spec: str, message: str) -> None:
    with pytest.raises(SeratioError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ModelConfig(depth=50, rr=parse_rr(spec))


@pytest.mark.parametrize("depth", [0, 7, 9, 51, -4])
def test_bad_depth(depth: int) -> None:
    with pytest.raises(SeratioError, match=f"depth {depth} is not 6n\\+2"):
        ModelConfig(depth=depth)


def test_single_value_applies_to_all_stages() -> None:
    assert parse_rr("none") == (None, None, None)
    assert parse_rr("8") == (8, 8, 8)
    assert parse_rr("8,none,16") == (8, None, 16)
