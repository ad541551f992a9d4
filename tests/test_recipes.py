"""The paper's recipe to the letter: schedule boundaries and Keras-style L2."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from seratio.architecture import ModelConfig
from seratio.errors import SeratioError
from seratio.models import build_model, kernel_parameters
from seratio.recipes import get_recipe
from seratio.session import optimizer_for


@pytest.mark.parametrize(
    ("epoch", "lr"),
    [(0, 1e-3), (80, 1e-3), (81, 1e-4), (120, 1e-4), (121, 1e-5), (160, 1e-5), (161, 1e-6), (180, 1e-6), (181, 5e-7), (199, 5e-7)],
)
def test_paper_schedule_boundaries(epoch: int, lr: float) -> None:
    assert get_recipe("paper").lr_at(epoch) == pytest.approx(lr, rel=1e-12)


def test_shortened_paper_schedule_scales_boundaries() -> None:
    recipe = get_recipe("paper", epochs=20)
    assert [recipe.lr_at(e) for e in (8, 9, 12, 13, 16, 17, 18, 19)] == pytest.approx(
        [1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6, 5e-7]
    )


def test_lr_override_scales_whole_schedule() -> None:
    recipe = get_recipe("paper", lr=2e-3)
    assert recipe.lr_at(0) == pytest.approx(2e-3)
    assert recipe.lr_at(100) == pytest.approx(2e-4)


def test_fast_recipe_warms_up_then_decays_to_zero() -> None:
    recipe = get_recipe("fast")
    assert recipe.lr_at(0, 0.5) == pytest.approx(recipe.lr * 0.25)
    assert recipe.lr_at(1, 1.0) == pytest.approx(recipe.lr)
    assert recipe.lr_at(25, 1.0) == pytest.approx(recipe.lr * 24 / 48)
    assert recipe.lr_at(49, 1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("epochs", "warmup"), [(2, 0.08), (10, 0.4), (50, 2.0), (100, 4.0)])
def test_fast_warm_up_scales_with_the_run_so_a_short_run_still_decays(epochs: int, warmup: float) -> None:
    recipe = get_recipe("fast", epochs=epochs)
    assert recipe.warmup_epochs == pytest.approx(warmup)
    assert recipe.lr_at(0, warmup / 2) == pytest.approx(recipe.lr / 2)
    assert recipe.lr_at(0, warmup) == pytest.approx(recipe.lr)
    assert recipe.lr_at(epochs - 1, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_metrics_lr_is_the_mean_over_the_epochs_updates() -> None:
    """`fast` on 45k images: 176 updates of batch 256 per epoch, update s at position (s + 1) / 176."""
    fast = get_recipe("fast")
    assert fast.mean_lr(0, 176) == pytest.approx(0.1 * 177 / 352, rel=1e-12)  # warm-up from 0, not 0.0
    assert fast.mean_lr(1, 176) == pytest.approx(0.1 * (1 + 177 / 352), rel=1e-12)
    assert fast.mean_lr(49, 176) == pytest.approx(0.2 / 48 * 175 / 352, rel=1e-12)
    paper = get_recipe("paper")
    assert paper.mean_lr(0, 1407) == paper.lr_at(0) == 1e-3
    assert paper.mean_lr(81, 1407) == pytest.approx(1e-4, rel=1e-12)


def test_keras_l2_equals_coupled_weight_decay_on_kernels() -> None:
    """loss + 1e-4 * sum(w^2) over kernels with plain Adam == Adam(weight_decay=2e-4) on kernels only."""
    recipe = get_recipe("paper")
    torch.manual_seed(0)
    explicit = build_model(ModelConfig(depth=8, rr=(4, 4, 4)))
    coupled = build_model(ModelConfig(depth=8, rr=(4, 4, 4)))
    coupled.load_state_dict(explicit.state_dict())
    plain_adam = torch.optim.Adam(explicit.parameters(), lr=recipe.lr, eps=recipe.adam_eps)
    ours = optimizer_for(coupled, recipe)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(explicit(x), y)
        loss = loss + 1e-4 * sum((w**2).sum() for w in kernel_parameters(explicit))
        plain_adam.zero_grad()
        loss.backward()
        plain_adam.step()
        ours.zero_grad()
        torch.nn.functional.cross_entropy(coupled(x), y).backward()
        ours.step()
    for a, b in zip(explicit.parameters(), coupled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fingerprint_changes_with_any_field() -> None:
    assert get_recipe("paper").fingerprint() != get_recipe("paper", epochs=10).fingerprint()
    assert get_recipe("paper").fingerprint() == get_recipe("paper").fingerprint()


def test_test_time_augmentation_leaves_the_hash_that_studies_compare() -> None:
    # The value every paper run recorded before `tta` existed: it changes no metric a study averages.
    assert get_recipe("paper").fingerprint() == "c9c9066fd79e"
    fast = get_recipe("fast")
    assert replace(fast, tta="none").fingerprint() == fast.fingerprint()
    assert get_recipe("paper").tta == "none" and get_recipe("fast").tta == "flip-shift"
    assert replace(get_recipe("paper"), tta="flip").fingerprint() == get_recipe("paper").fingerprint()


def test_unknown_test_time_augmentation_names_the_allowed_ones() -> None:
    with pytest.raises(SeratioError, match="test-time augmentation 'crops' is unknown; allowed: none, flip, flip-shift"):
        replace(get_recipe("fast"), tta="crops")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "adamw"}, "unknown recipe 'adamw'; allowed: paper, fast"),
        ({"name": "paper", "epochs": 0}, "epochs 0 must be an integer from 1 to 10,000"),
        ({"name": "paper", "batch_size": -1}, "batch size -1 must be an integer from 1 to 60,000"),
        ({"name": "paper", "lr": 0.0}, "learning rate 0.0 must be a finite number > 0"),
        ({"name": "paper", "lr": float("nan")}, "learning rate nan must be a finite number > 0"),
    ],
)
def test_bad_recipe_inputs(kwargs: dict, message: str) -> None:
    with pytest.raises(SeratioError, match=message.replace("(", r"\(").replace(".", r"\.")):
        get_recipe(**kwargs)


def test_bn_momentum_is_keras_at_full_size_and_faster_on_short_epochs() -> None:
    recipe = get_recipe("paper")
    assert recipe.bn_momentum_for(1563) == 0.01
    assert recipe.bn_momentum_for(2000) == 0.01
    assert recipe.bn_momentum_for(1407) == pytest.approx(0.0111, abs=1e-4)
    assert recipe.bn_momentum_for(63) == pytest.approx(1 - 0.99 ** (1563 / 63))
    assert get_recipe("fast").bn_momentum_for(10) == 0.1
