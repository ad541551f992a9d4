"""Property-based tests: the ratio parser and the model builder, over every spec hypothesis can think of.

The parameter count is checked against a closed form derived by hand, not against the code's own
counting, so a miscounted layer cannot hide. For depth 6n+2 (n blocks per stage), K classes,
convolutions without bias, BN (weight and bias) after every convolution, BN on the projections:

    stem         conv 3x3 3->16 + BN(16)                                 432 + 32          =    464
    stage 1      n blocks 16->16: 2 convs 3x3 + 2 BN                     n (2*9*16*16 + 4*16) = 4672 n
    stage 2      first block 16->32 with 1x1 projection + BN:
                 9*16*32 + 9*32*32 + 4*32 + 16*32 + 2*32                               = 14528
                 n-1 blocks 32->32                                        (n-1) (2*9*32*32 + 4*32) = 18560 (n-1)
    stage 3      first block 32->64 with projection:
                 9*32*64 + 9*64*64 + 4*64 + 32*64 + 2*64                               = 57728
                 n-1 blocks 64->64                                        (n-1) (2*9*64*64 + 4*64) = 73984 (n-1)
    classifier   FC 64->K with bias                                                    = 65 K

    ResNet(n, K) = 97216 n - 19824 + 65 K        (n = 8, K = 10: 758,554 as in DESIGN section 3)

An SE block on c channels with hidden width h = c // r adds FC c->h and FC h->c with biases:
2 c h + h + c, once per block, so n (2 c h + h + c) per stage.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seratio.architecture import STAGE_CHANNELS, ModelConfig, count_params, format_rr, parse_rr
from seratio.errors import SeratioError

FAST = settings(max_examples=30, deadline=None)
Ratio = int | None


def resnet_params(n: int, classes: int) -> int:
    return 97_216 * n - 19_824 + 65 * classes


def se_params(n: int, rr: tuple[Ratio, ...]) -> int:
    return sum(n * (2 * c * (c // r) + c // r + c) for c, r in zip(STAGE_CHANNELS, rr) if r is not None)


def _valid_ratio(channels: int) -> st.SearchStrategy[Ratio]:
    return st.one_of(st.none(), st.integers(min_value=1, max_value=channels))


valid_rr = st.tuples(*(_valid_ratio(c) for c in STAGE_CHANNELS))
depths = st.integers(min_value=1, max_value=9).map(lambda n: 6 * n + 2)


def _is_ratio_text(text: str) -> bool:
    """What the parser accepts for one stage: an integer >= 1 as int() reads it, or none / -."""
    token = text.strip()
    if token.lower() in {"none", "-"}:
        return True
    try:
        return int(token) >= 1
    except ValueError:
        return False


bad_token = st.one_of(
    st.integers(max_value=0).map(str),
    st.sampled_from(["x", "2.5", "1e3", "", "eight", "4 4", "0x10", "nan"]),
    st.text(alphabet=st.characters(blacklist_characters=","), max_size=6).filter(lambda t: not _is_ratio_text(t)),
)


def test_closed_form_matches_the_paper_numbers() -> None:
    assert resnet_params(8, 10) == 758_554
    assert resnet_params(8, 10) + se_params(8, (16, 16, 16)) == 758_554 + 6_328
    assert resnet_params(8, 10) + se_params(8, (8, 2, 16)) == 772_426


@FAST
@given(rr=valid_rr)
def test_valid_specs_round_trip_through_format_rr(rr: tuple[Ratio, ...]) -> None:
    spec = format_rr(rr)
    assert parse_rr(spec) == rr
    assert format_rr(parse_rr(spec)) == spec
    assert parse_rr(" , ".join(spec.split(","))) == rr  # spaces around the commas are fine


@FAST
@given(ratio=_valid_ratio(16))
def test_one_value_means_every_stage(ratio: Ratio) -> None:
    assert parse_rr("none" if ratio is None else str(ratio)) == (ratio,) * len(STAGE_CHANNELS)


@FAST
@given(rr=valid_rr, stage=st.integers(min_value=0, max_value=2), token=bad_token)
def test_an_invalid_stage_is_refused_and_named(rr: tuple[Ratio, ...], stage: int, token: str) -> None:
    tokens = format_rr(rr).split(",")
    tokens[stage] = token
    with pytest.raises(SeratioError, match=rf"^stage {stage + 1}: reduction ratio "):
        parse_rr(",".join(tokens))


@FAST
@given(count=st.integers(min_value=2, max_value=8).filter(lambda k: k != len(STAGE_CHANNELS)), ratio=st.integers(1, 16))
def test_a_wrong_number_of_stages_is_refused_with_the_count(count: int, ratio: int) -> None:
    spec = ",".join([str(ratio)] * count)
    with pytest.raises(SeratioError, match=re.escape(f"{spec!r} give {count} stages; the model has 3")):
        parse_rr(spec)


@FAST
@given(rr=valid_rr, stage=st.integers(min_value=0, max_value=2), extra=st.integers(min_value=1, max_value=1000))
def test_a_ratio_that_leaves_no_hidden_unit_names_stage_channels_and_ratio(
    rr: tuple[Ratio, ...], stage: int, extra: int
) -> None:
    channels = STAGE_CHANNELS[stage]
    too_big = channels + extra
    bad = tuple(too_big if i == stage else r for i, r in enumerate(rr))
    first_bad = next(i for i, (c, r) in enumerate(zip(STAGE_CHANNELS, bad)) if r is not None and c // r == 0)
    with pytest.raises(SeratioError, match=rf"stage {first_bad + 1} has {STAGE_CHANNELS[first_bad]} channels; ratio "):
        ModelConfig(depth=8, rr=bad)


@FAST
@given(depth=depths, rr=valid_rr, classes=st.integers(min_value=2, max_value=100))
def test_any_valid_spec_builds_a_model_with_the_closed_form_parameter_count(
    depth: int, rr: tuple[Ratio, ...], classes: int
) -> None:
    n = (depth - 2) // 6
    assert count_params(ModelConfig(depth=depth, rr=rr, num_classes=classes)) == resnet_params(n, classes) + se_params(n, rr)
