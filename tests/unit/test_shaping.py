"""Reward shaping methods, the length penalty and ceiling, and running statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.scoring.running_stats import RunningStats
from service.scoring.shaping import (
    METHODS,
    ShapingSpec,
    adjust_rewards,
    fitted_poly,
    is_stateful,
    needs_references,
    shape,
    shape_stateless,
    shape_with_references,
    shape_with_stats,
)

PROPS = settings(max_examples=200, deadline=None)


def msig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def poly(x: float) -> float:
    return 0.000376132953 * x**5 - 0.0132916611 * x**3 + 0.239537005 * x + 0.5


def refs_shape(spec: ShapingSpec, r: list[float], rows: list[list[float]]) -> np.ndarray:
    """Pad ragged reference rows to (N, K) with NaN and shape."""
    k = max(len(row) for row in rows)
    refs = np.full((len(rows), k), np.nan)
    mask = np.zeros((len(rows), k), dtype=bool)
    for i, row in enumerate(rows):
        refs[i, : len(row)] = row
        mask[i, : len(row)] = True
    return shape_with_references(spec, np.array(r), refs, mask)


PAR = ShapingSpec("par")
CENTERED = ShapingSpec("centered")
LSC = ShapingSpec("lsc")
SIG_C = ShapingSpec("sigmoid", centered=True)
TANH_C = ShapingSpec("tanh", centered=True)
POLY_C = ShapingSpec("fittedpoly", centered=True)
SHIFT_INVARIANT = [PAR, CENTERED, LSC, SIG_C, ShapingSpec("sigmoid", sigmoid_k=2.5, centered=True),
                   TANH_C, POLY_C]  # fmt: skip


# ---------------------------------------------------------------------------- spec


def test_method_classification() -> None:
    refs = {m for m in METHODS if needs_references(ShapingSpec(m))}
    assert refs == {"par", "centered", "lsc"}
    centred = {m for m in METHODS if needs_references(ShapingSpec(m, centered=True))}
    assert centred == {"par", "centered", "lsc", "sigmoid", "tanh", "fittedpoly"}
    assert {m for m in METHODS if is_stateful(ShapingSpec(m))} == {"meanstd", "clip", "minmax"}
    assert ShapingSpec().method == "par"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "ppo"}, "unknown shaping method"),
        ({"max_references": 0}, "max_references"),
        ({"max_references": 2.5}, "max_references"),
        ({"max_references": True}, "max_references"),
        ({"length_penalty": -0.1}, "length_penalty"),
        ({"length_penalty": math.nan}, "length_penalty"),
        ({"length_penalty": math.inf}, "length_penalty"),
        ({"free_tokens": -1}, "free_tokens"),
        ({"sigmoid_k": 0.0}, "sigmoid_k"),
        ({"sigmoid_k": -1.0}, "sigmoid_k"),
        ({"sigmoid_k": math.inf}, "sigmoid_k"),
        ({"sigmoid_k": math.nan}, "sigmoid_k"),
        ({"ceiling": math.inf}, "ceiling"),
        ({"ceiling": math.nan}, "ceiling"),
        ({"ceiling": "1"}, "ceiling"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ShapingSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_accepts_valid_values() -> None:
    spec = ShapingSpec("sigmoid", max_references=1, sigmoid_k=3, length_penalty=0.01,
                       free_tokens=100, ceiling=-2, centered=True)  # fmt: skip
    assert spec.ceiling == -2


# ---------------------------------------------------------------------------- reference methods


def test_par_hand_values() -> None:
    # sigmoid(1) + sigmoid(-1) == 1 exactly in the maths; in float64 within an ulp.
    assert refs_shape(PAR, [1.0], [[0.0, 2.0]])[0] == pytest.approx(0.5, abs=1e-16)
    out = refs_shape(PAR, [1.0, 0.5, -2.0], [[0.0], [0.0, 1.0, 3.0], [0.0, 0.0]])
    expected = [
        0.7310585786300049,  # sigmoid(1)
        (msig(0.5) + msig(-0.5) + msig(-2.5)) / 3,
        0.11920292202211755,  # sigmoid(-2)
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    assert out.dtype == np.float64


def test_centered_and_centred_variants_hand_values() -> None:
    r, rows = [1.0, -1.0], [[0.0, 2.0, 4.0], [0.5]]
    np.testing.assert_allclose(refs_shape(CENTERED, r, rows), [-1.0, -1.5], rtol=1e-15)
    np.testing.assert_allclose(
        refs_shape(ShapingSpec("sigmoid", sigmoid_k=2.0, centered=True), r, rows),
        [(msig(2.0) + msig(-2.0) + msig(-6.0)) / 3, msig(-3.0)],
        rtol=1e-14,
    )
    np.testing.assert_allclose(
        refs_shape(TANH_C, r, rows),
        [(math.tanh(1.0) + math.tanh(-1.0) + math.tanh(-3.0)) / 3, math.tanh(-1.5)],
        rtol=1e-14,
    )
    # -3 is inside the polynomial's range, -6 is outside (sigmoid).
    np.testing.assert_allclose(
        refs_shape(POLY_C, [1.0, 0.0], [[0.0, 4.0], [6.0]]),
        [(poly(1.0) + poly(-3.0)) / 2, msig(-6.0)],
        rtol=1e-14,
    )


def test_lsc_hand_values() -> None:
    # refs [0, 2]: mean 1, population std 1, ref85 = 2.0364333894937898.
    out = refs_shape(LSC, [3.0, 2.0364333894937898], [[0.0, 2.0], [0.0, 2.0]])
    np.testing.assert_allclose(
        out, [-math.log1p(math.exp(-0.9635666105062102)), math.log(0.5)], rtol=1e-14
    )
    # A single reference has std 0: log sigmoid(r - ref).
    np.testing.assert_allclose(refs_shape(LSC, [1.0], [[1.0]]), [math.log(0.5)], rtol=1e-15)
    # refs [1, 2, 6]: mean 3, pop std sqrt(14/3).
    ref85 = 3.0 + 1.0364333894937898 * math.sqrt(14 / 3)
    np.testing.assert_allclose(
        refs_shape(LSC, [0.0], [[1.0, 2.0, 6.0]]), [-math.log1p(math.exp(ref85))], rtol=1e-14
    )


def test_masked_rows_with_different_k_ignore_padding() -> None:
    refs = np.array([[0.0, 2.0, 4.0], [1.0, 1e300, -np.inf], [3.0, np.nan, 7.0]])
    mask = np.array([[True, True, True], [True, False, False], [True, False, True]])
    r = np.array([1.0, 1.0, 5.0])
    for spec in SHIFT_INVARIANT:
        got = shape_with_references(spec, r, refs, mask)
        one_by_one = [
            shape_with_references(spec, r[i : i + 1], refs[i : i + 1, mask[i]],
                                  np.ones((1, int(mask[i].sum())), dtype=bool))[0]
            for i in range(3)
        ]  # fmt: skip
        np.testing.assert_allclose(got, one_by_one, rtol=1e-15)
    np.testing.assert_allclose(shape_with_references(PAR, r, refs, mask), [
        (msig(1.0) + msig(-1.0) + msig(-3.0)) / 3, 0.5, (msig(2.0) + msig(-2.0)) / 2,
    ], rtol=1e-15)  # fmt: skip


def test_reference_input_errors() -> None:
    r = np.array([1.0, 2.0])
    refs = np.zeros((2, 2))
    with pytest.raises(ValueError, match="at least one reference"):
        shape_with_references(PAR, r, refs, np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="max_references"):
        shape_with_references(ShapingSpec("par", max_references=1), r, refs, np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="boolean"):
        shape_with_references(PAR, r, refs, np.ones((2, 2)))
    with pytest.raises(ValueError, match="mask shape"):
        shape_with_references(PAR, r, refs, np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="references must have shape"):
        shape_with_references(PAR, r, np.zeros((3, 2)), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="1-D"):
        shape_with_references(PAR, r[:, None], refs, np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="does not use references"):
        shape_with_references(ShapingSpec("sigmoid"), r, refs, np.ones((2, 2), bool))
    empty = shape_with_references(PAR, np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3), bool))
    assert empty.shape == (0,)


# ---------------------------------------------------------------------------- stateless methods


def test_stateless_hand_values() -> None:
    r = np.array([-5.0, -1.0, 0.0, 2.0, 4.0])
    np.testing.assert_array_equal(shape_stateless(ShapingSpec("vanilla"), r), r)
    np.testing.assert_allclose(
        shape_stateless(ShapingSpec("sigmoid"), r), [msig(x) for x in r], rtol=1e-15
    )
    np.testing.assert_allclose(
        shape_stateless(ShapingSpec("sigmoid", sigmoid_k=0.5), r),
        [msig(-2.5), msig(-0.5), 0.5, msig(1.0), msig(2.0)],
        rtol=1e-15,
    )
    np.testing.assert_allclose(
        shape_stateless(ShapingSpec("tanh"), r), [math.tanh(x) for x in r], rtol=1e-15
    )
    np.testing.assert_allclose(
        shape_stateless(ShapingSpec("fittedpoly"), r),
        [msig(-5.0), 1 - 0.726621476853, 0.5, 0.884776975696, 0.992641853472],
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="not stateless"):
        shape_stateless(PAR, r)
    with pytest.raises(ValueError, match="not stateless"):
        shape_stateless(ShapingSpec("minmax"), r)


def test_stateless_does_not_alias_input() -> None:
    r = np.array([1.0, 2.0])
    out = shape_stateless(ShapingSpec("vanilla"), r)
    out[0] = 9.0
    assert r[0] == 1.0


def test_fittedpoly_centre_symmetry_and_boundary() -> None:
    assert fitted_poly(np.array([0.0]))[0] == 0.5
    x = np.linspace(-4, 4, 801)
    np.testing.assert_allclose(fitted_poly(x) + fitted_poly(-x), 1.0, atol=1e-15)
    assert np.all(np.diff(fitted_poly(x)) > 0)  # increasing inside the fitted range
    # The paper's fit meets sigmoid at |x| = 4 with a jump of about 0.011 (0.9926 vs 0.9820).
    for edge in (4.0, -4.0):
        inside = fitted_poly(np.array([edge]))[0]
        outside = fitted_poly(np.array([np.nextafter(edge, 2 * edge)]))[0]
        assert inside == pytest.approx(poly(edge), abs=1e-15)
        assert outside == pytest.approx(msig(edge), abs=1e-15)
        assert abs(inside - outside) < 0.012
    assert fitted_poly(np.array([1e300]))[0] == 1.0
    assert fitted_poly(np.array([-1e300]))[0] == 0.0


# ---------------------------------------------------------------------------- stateful methods


def test_stats_methods_hand_values() -> None:
    r = np.array([1.0, 2.0, 3.0, 6.0])
    stats = RunningStats.from_values(r)  # mean 3, population var 3.5
    sd = math.sqrt(3.5)
    np.testing.assert_allclose(
        shape_with_stats(ShapingSpec("meanstd"), r, stats), (r - 3.0) / sd, rtol=1e-15
    )
    np.testing.assert_allclose(
        shape_with_stats(ShapingSpec("clip"), r, stats), [3 - sd, 2.0, 3.0, 3 + sd], rtol=1e-15
    )
    np.testing.assert_allclose(
        shape_with_stats(ShapingSpec("minmax"), r, stats), [0.0, 0.2, 0.4, 1.0], rtol=1e-15
    )


def test_stats_methods_use_history_and_floor() -> None:
    history = RunningStats.from_values(np.array([-4.0, 10.0]))
    batch = np.array([0.0, 2.0])
    stats = history.merge(RunningStats.from_values(batch))  # -4, 10, 0, 2: mean 2, var 104/4 = 26
    np.testing.assert_allclose(
        shape_with_stats(ShapingSpec("meanstd"), batch, stats),
        [-2 / math.sqrt(26), 0.0],
        rtol=1e-14,
        atol=1e-15,
    )
    np.testing.assert_allclose(
        shape_with_stats(ShapingSpec("minmax"), batch, stats), [4 / 14, 6 / 14], rtol=1e-15
    )
    # Constant rewards: sigma floors at 1e-4, max - min floors at 1e-8.
    const = np.array([5.0, 5.0])
    cstats = RunningStats.from_values(const)
    np.testing.assert_array_equal(shape_with_stats(ShapingSpec("meanstd"), const, cstats), 0.0)
    np.testing.assert_array_equal(shape_with_stats(ShapingSpec("minmax"), const, cstats), 0.0)
    np.testing.assert_array_equal(shape_with_stats(ShapingSpec("clip"), const, cstats), 5.0)


def test_minmax_is_zero_with_empty_stats() -> None:
    out = shape_with_stats(ShapingSpec("minmax"), np.array([3.0, -1.0]), RunningStats())
    np.testing.assert_array_equal(out, [0.0, 0.0])
    assert out.dtype == np.float64


def test_stats_method_errors() -> None:
    with pytest.raises(ValueError, match="running statistics"):
        shape_with_stats(PAR, np.zeros(1), RunningStats())


# ---------------------------------------------------------------------------- dispatcher


def test_shape_dispatches_and_reports_missing_inputs() -> None:
    r = np.array([1.0, 0.0])
    refs = np.array([[0.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(shape(PAR, r, references=refs), [0.5, 0.5], atol=1e-16)
    mask = np.array([[True, False], [True, True]])
    np.testing.assert_allclose(
        shape(PAR, r, references=refs, mask=mask), [msig(1.0), 0.5], rtol=1e-15
    )
    np.testing.assert_allclose(shape(ShapingSpec("tanh"), r), np.tanh(r), rtol=1e-15)
    stats = RunningStats.from_values(r)
    np.testing.assert_allclose(shape(ShapingSpec("minmax"), r, stats=stats), [1.0, 0.0])
    with pytest.raises(ValueError, match="needs reference rewards"):
        shape(PAR, r)
    with pytest.raises(ValueError, match="needs reference rewards"):
        shape(SIG_C, r, stats=stats)
    with pytest.raises(ValueError, match="running statistics"):
        shape(ShapingSpec("clip"), r, references=refs)


# ---------------------------------------------------------------------------- adjustments


def test_length_penalty_and_ceiling() -> None:
    spec = ShapingSpec("vanilla", length_penalty=0.01, free_tokens=100, ceiling=1.5)
    r = np.array([2.0, 2.0, 1.0, -1.0])
    lengths = np.array([50, 100, 150, 300])
    # penalties 0, 0, 0.5, 2.0; then the ceiling caps the first two at 1.5.
    np.testing.assert_allclose(adjust_rewards(r, lengths, spec), [1.5, 1.5, 0.5, -3.0])
    np.testing.assert_array_equal(r, [2.0, 2.0, 1.0, -1.0])  # input untouched
    plain = adjust_rewards(r, lengths, ShapingSpec())
    np.testing.assert_array_equal(plain, r)
    assert plain is not r
    with pytest.raises(ValueError, match="lengths shape"):
        adjust_rewards(r, np.array([1, 2]), spec)


def test_adjustments_apply_to_references_too() -> None:
    spec = ShapingSpec("par", length_penalty=0.1, free_tokens=10, ceiling=3.0)
    r = adjust_rewards(np.array([5.0]), np.array([20]), spec)  # 5 - 1 = 4 -> ceiling 3
    refs = adjust_rewards(np.array([[3.0, 9.0]]), np.array([[10, 40]]), spec)  # [3, 6 -> 3]
    np.testing.assert_allclose(r, [3.0])
    np.testing.assert_allclose(refs, [[3.0, 3.0]])
    assert shape(spec, r, references=refs)[0] == 0.5


# ---------------------------------------------------------------------------- properties

moderate = st.floats(-15.0, 15.0, allow_nan=False)
wide = st.floats(-1e6, 1e6, allow_nan=False)


@st.composite
def reference_batch(draw: st.DrawFn, values: st.SearchStrategy[float] = moderate):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, 5))
    r = draw(hnp.arrays(np.float64, n, elements=values))
    refs = draw(hnp.arrays(np.float64, (n, k), elements=values))
    mask = draw(hnp.arrays(np.bool_, (n, k)))
    mask[np.arange(n), draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))] = True
    return r, refs, mask


@PROPS
@given(reference_batch())
def test_par_bounded(batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    out = shape_with_references(PAR, *batch)
    assert np.all((out > 0.0) & (out < 1.0))


@PROPS
@given(reference_batch(st.floats(-1e300, 1e300, allow_nan=False)))
def test_par_in_unit_interval_for_any_finite(batch) -> None:
    out = shape_with_references(PAR, *batch)
    assert np.all((out >= 0.0) & (out <= 1.0))


@PROPS
@given(reference_batch(), st.floats(-100.0, 100.0), st.sampled_from(SHIFT_INVARIANT))
def test_shift_invariance(batch, c: float, spec: ShapingSpec) -> None:
    r, refs, mask = batch
    base = shape_with_references(spec, r, refs, mask)
    shifted = shape_with_references(spec, r + c, refs + c, mask)
    np.testing.assert_allclose(shifted, base, rtol=1e-9, atol=1e-9)


@PROPS
@given(
    reference_batch(), st.floats(0.0, 30.0), st.sampled_from([PAR, CENTERED, LSC, SIG_C, TANH_C])
)
def test_monotone_in_reward(batch, step: float, spec: ShapingSpec) -> None:
    r, refs, mask = batch
    lower = shape_with_references(spec, r, refs, mask)
    higher = shape_with_references(spec, r + step, refs, mask)
    assert np.all(higher >= lower)


@PROPS
@given(reference_batch(st.floats(-1e6, 1e6, allow_nan=False)))
def test_reward_equal_to_all_references_is_exactly_half(batch) -> None:
    r, refs, mask = batch
    refs = np.where(mask, r[:, None], refs)
    for spec in (PAR, SIG_C, POLY_C):
        assert np.all(shape_with_references(spec, r, refs, mask) == 0.5)
    assert np.all(shape_with_references(CENTERED, r, refs, mask) == 0.0)
    assert np.all(shape_with_references(TANH_C, r, refs, mask) == 0.0)


@PROPS
@given(reference_batch(wide), st.sampled_from(SHIFT_INVARIANT))
def test_reference_methods_finite_for_large_inputs(batch, spec: ShapingSpec) -> None:
    out = shape_with_references(spec, *batch)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("x", [1e6, -1e6, 1e300, -1e300])
def test_no_overflow_for_huge_inputs(x: float) -> None:
    r = np.array([x, -x, 0.0])
    refs = np.array([[-x, x], [x, 0.0], [x, -x]])
    mask = np.ones_like(refs, dtype=bool)
    for spec in [PAR, SIG_C, ShapingSpec("sigmoid", sigmoid_k=1e10, centered=True), TANH_C,
                 POLY_C, LSC, CENTERED]:  # fmt: skip
        assert not np.any(np.isnan(shape_with_references(spec, r, refs, mask)))
    for method in ("sigmoid", "tanh", "fittedpoly"):
        out = shape_stateless(ShapingSpec(method, sigmoid_k=1e10), r)
        assert np.all(np.isfinite(out))
    bounded = shape_with_references(PAR, r, refs, mask)
    assert np.all((bounded >= 0) & (bounded <= 1))
    if abs(x) > 1e150:
        return  # a variance of ~1e600 is not representable; running stats stop here
    stats = RunningStats.from_values(r)
    for method in ("minmax", "clip", "meanstd"):
        assert np.all(np.isfinite(shape_with_stats(ShapingSpec(method), r, stats)))


@PROPS
@given(
    hnp.arrays(np.float64, st.integers(1, 20), elements=wide),
    st.sampled_from(["sigmoid", "tanh", "fittedpoly"]),
)
def test_stateless_bounded(r: np.ndarray, method: str) -> None:
    out = shape_stateless(ShapingSpec(method), r)
    lo = -1.0 if method == "tanh" else 0.0
    assert np.all((out >= lo) & (out <= 1.0))


@PROPS
@given(
    hnp.arrays(np.float64, st.integers(0, 40), elements=wide),
    st.lists(st.integers(0, 40), max_size=4),
)
def test_running_stats_merge_matches_one_pass(values: np.ndarray, cuts: list[int]) -> None:
    bounds = [0, *sorted(min(c, values.size) for c in cuts), values.size]
    merged = RunningStats()
    for lo, hi in itertools.pairwise(bounds):
        merged = merged.merge(RunningStats.from_values(values[lo:hi]))
    whole = RunningStats.from_values(values)
    assert merged.count == whole.count
    assert merged.min == whole.min
    assert merged.max == whole.max
    scale = float(np.abs(values).max()) if values.size else 0.0
    assert merged.mean == pytest.approx(whole.mean, rel=1e-9, abs=1e-12 * scale + 1e-300)
    # The 1e-300 floor: squares of subnormal inputs have no relative precision left.
    assert merged.m2 == pytest.approx(
        whole.m2, rel=1e-7, abs=1e-9 * scale**2 * max(values.size, 1) + 1e-300
    )


@PROPS
@given(
    hnp.arrays(np.float64, st.integers(1, 20), elements=wide),
    hnp.arrays(np.float64, st.integers(0, 20), elements=wide),
)
def test_stats_methods_properties(batch: np.ndarray, history: np.ndarray) -> None:
    stats = RunningStats.from_values(history).merge(RunningStats.from_values(batch))
    mm = shape_with_stats(ShapingSpec("minmax"), batch, stats)
    assert np.all((mm >= 0.0) & (mm <= 1.0))
    clipped = shape_with_stats(ShapingSpec("clip"), batch, stats)
    assert np.all(np.abs(clipped - stats.mean) <= stats.std * (1 + 1e-12) + 1e-9)
    z = shape_with_stats(ShapingSpec("meanstd"), batch, stats)
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z * stats.std + stats.mean, batch, rtol=1e-9, atol=1e-6)
