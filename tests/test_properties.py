"""Property tests (hypothesis) for the memory bank and the snippet-mixing methods.

Each property holds for every input hypothesis draws: small shapes and modest example counts keep the file fast
(a few seconds on 2 cores); `deadline=None` because the shared CI machine stalls at random.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gmem_explore.bank.memory import MIX_METHODS, MemoryBank, index_from_noise, mix, normalize
from gmem_explore.bank.checks import rows_spoiled_by_cast

FAST = settings(max_examples=30, deadline=None)
ATOL = 1e-5

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)
dims = st.integers(min_value=1, max_value=12)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds waiting on the shared machine
    yield
    torch.set_num_threads(before)


@st.composite
def matrices(draw, min_rows=1, max_rows=8, dim=None, nonzero=True):
    d = draw(dims) if dim is None else dim
    n = draw(st.integers(min_rows, max_rows))
    x = torch.from_numpy(draw(arrays(np.float32, (n, d), elements=finite)))
    if nonzero:  # rows far enough from zero that their direction is defined in float32
        assume(bool((x.norm(dim=1) > 1e-3).all()))
    return x


@st.composite
def snippet_pairs(draw):
    d = draw(dims)
    n = draw(st.integers(1, 4))
    return draw(matrices(min_rows=n, max_rows=n, dim=d)), draw(matrices(min_rows=n, max_rows=n, dim=d))


def unit(x: torch.Tensor) -> torch.Tensor:
    return x.double() / x.double().norm(dim=-1, keepdim=True)


# ---- normalisation -----------------------------------------------------------------------------------------
@FAST
@given(matrices())
def test_normalize_gives_unit_rows_of_the_same_shape(x):
    y = normalize(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.allclose(y.norm(dim=1), torch.ones(len(x)), atol=ATOL)
    assert torch.allclose(y.double(), unit(x), atol=ATOL)  # same direction


@FAST
@given(matrices(nonzero=False))
def test_normalize_is_idempotent_and_keeps_zero_rows_zero(x):
    once = normalize(x)
    assert torch.allclose(normalize(once), once, atol=ATOL)
    zero = (x == 0).all(dim=1)
    assert torch.all(once[zero] == 0) and torch.isfinite(once).all()


@FAST
@given(matrices(), st.floats(min_value=1e-2, max_value=1e2))
def test_normalize_ignores_positive_scale(x, scale):
    assert torch.allclose(normalize(x * scale), normalize(x), atol=1e-4)


# ---- mixing ------------------------------------------------------------------------------------------------
@FAST
@given(snippet_pairs(), st.sampled_from(MIX_METHODS), st.floats(0, 1), st.integers(0, 2**31))
def test_mix_keeps_the_shape_and_unit_norm(pair, method, weight, seed):
    a, b = pair
    # lerp of opposite directions passes through zero; away from that the result is a unit vector
    assume(bool(((unit(a) + unit(b)).norm(dim=1) > 1e-2).all()))
    try:
        out = mix(a, b, weight, method, seed)
    except ValueError as e:  # concat / mask can pick only zero entries: refused, never a silent zero snippet
        assert "zero vector" in str(e) and method in ("concat", "mask")
        return
    assert out.shape == a.shape and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(len(a)), atol=1e-4)


@FAST
@given(snippet_pairs(), st.sampled_from(MIX_METHODS), st.integers(0, 2**31))
def test_every_method_starts_at_a_and_ends_at_b(pair, method, seed):
    a, b = pair
    assert torch.allclose(mix(a, b, 0.0, method, seed).double(), unit(a), atol=1e-4)
    assert torch.allclose(mix(a, b, 1.0, method, seed).double(), unit(b), atol=1e-4)


@FAST
@given(snippet_pairs(), st.floats(0, 1))
def test_slerp_moves_along_the_great_circle_at_constant_speed(pair, weight):
    a, b = pair
    ua, ub = unit(a), unit(b)
    omega = torch.arccos((ua * ub).sum(1).clamp(-1, 1))
    assume(bool((omega > 1e-2).all() and (omega < math.pi - 1e-2).all()))  # a defined great circle
    out = mix(a, b, weight, "slerp").double()
    # angle to a is weight * omega and angle to b is (1 - weight) * omega
    to_a = torch.arccos((out * ua).sum(1).clamp(-1, 1))
    to_b = torch.arccos((out * ub).sum(1).clamp(-1, 1))
    assert torch.allclose(to_a, weight * omega, atol=2e-3)
    assert torch.allclose(to_b, (1 - weight) * omega, atol=2e-3)


@FAST
@given(matrices(), st.floats(0, 1), st.sampled_from(MIX_METHODS))
def test_mixing_a_snippet_with_itself_returns_it(x, weight, method):
    assert torch.allclose(mix(x, x, weight, method).double(), unit(x), atol=1e-4)


@FAST
@given(snippet_pairs(), st.floats(0, 1), st.integers(0, 2**31))
def test_concat_and_mask_take_each_dimension_from_a_or_b(pair, weight, seed):
    a, b = pair
    na, nb = normalize(a), normalize(b)
    d = a.shape[1]
    split = round((1 - weight) * d)  # concat: the first (1 - weight) of the dimensions from a, the rest from b
    expected = torch.cat([na[:, :split], nb[:, split:]], 1)
    if bool((expected.norm(dim=1) < 1e-6).any()):  # only zero entries taken: refused, never a zero snippet
        with pytest.raises(ValueError, match="zero vector"):
            mix(a, b, weight, "concat")
    else:
        assert torch.allclose(mix(a, b, weight, "concat"), normalize(expected), atol=1e-5)
    # mask: some subset of dimensions from b, the same subset for the same seed (or the same refusal)
    try:
        out = mix(a, b, weight, "mask", seed)
    except ValueError as e:
        assert "zero vector" in str(e)
        with pytest.raises(ValueError, match="zero vector"):
            mix(a, b, weight, "mask", seed)
        return
    assert torch.equal(out, mix(a, b, weight, "mask", seed))
    subsets = [torch.tensor([(i >> j) & 1 for j in range(d)], dtype=torch.bool) for i in range(2 ** d)] if d <= 8 else []
    if subsets:
        assert any(torch.allclose(out, normalize(torch.where(m, nb, na)), atol=1e-5) for m in subsets)


# ---- the bank ----------------------------------------------------------------------------------------------
@FAST
@given(matrices(min_rows=1, max_rows=30, dim=6), matrices(min_rows=1, max_rows=1, dim=6), st.integers(1, 5))
def test_nearest_neighbour_of_an_inserted_row_is_that_row(rows, new, k):
    bank = MemoryBank(rows)
    index = int(bank.add(new)[0])
    best, sims = bank.nearest(new * 3.0, k=k)  # the query's length must not matter
    assert best.shape == sims.shape == (1, min(k, len(bank)))
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-4)
    # ties may come first: a stored row in the same direction up to float32's resolution of the cosine (rows
    # 2.4e-4 rad apart have cosine 1 - 3e-8, which float32 cannot tell from 1; hypothesis found such a pair)
    first = bank.rows[best[0, 0]].double()
    assert torch.nn.functional.cosine_similarity(first, new[0].double(), dim=0) > 1 - 1e-6
    assert index in best[0].tolist() or bool((sims[0] > 1 - 1e-4).all())
    assert bool((sims[0][:-1] >= sims[0][1:] - 1e-6).all()), "similarities must come sorted"


@FAST
@given(matrices(min_rows=2, max_rows=20, dim=5), st.data())
def test_add_and_remove_keep_rows_and_extras_aligned(rows, data):
    n = len(rows)
    freq = torch.arange(1, n + 1).double()
    bank = MemoryBank(rows, freq, torch.arange(n), thumbnails=torch.zeros(n, 2, 2, 3, dtype=torch.uint8))
    drop = sorted(set(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n - 1))))
    bank.remove(drop)
    keep = [i for i in range(n) if i not in drop]
    assert len(bank) == len(keep) == len(bank.freq) == len(bank.labels) == len(bank.thumbnails)
    assert torch.equal(bank.rows, rows[keep]) and bank.labels.tolist() == keep
    assert torch.equal(bank.freq, freq[keep])


@settings(max_examples=15, deadline=None)
@given(matrices(min_rows=0, max_rows=10, dim=4, nonzero=False), st.sampled_from([None, torch.float16]))
def test_save_then_load_gives_the_same_bank(rows, dtype):
    bank = MemoryBank(rows.clamp(-6e4, 6e4), torch.ones(len(rows)).double() if len(rows) else None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.safetensors"
        if dtype is not None and rows_spoiled_by_cast(bank.rows, dtype)[1]:
            # a nonzero row whose values all lie below float16's range would load as zeros: refused, nothing written
            with pytest.raises(ValueError, match="do not fit in torch.float16"):
                bank.save(path, dtype=dtype)
            assert not list(Path(tmp).iterdir())
            return
        bank.save(path, dtype=dtype)
        back = MemoryBank.load(path)
        want = bank.rows.to(dtype) if dtype else bank.rows
        assert back.rows.dtype == want.dtype and torch.equal(back.rows, want)
        assert (back.freq is None) == (bank.freq is None)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["bank.safetensors"]  # no temporary left


@FAST
@given(arrays(np.float32, (3, 2, 2), elements=finite), st.lists(st.floats(0, 10), min_size=1, max_size=12))
def test_rows_chosen_from_noise_exist_and_have_positive_frequency(noise, freq):
    freq = torch.tensor(freq, dtype=torch.float64)
    assume(float(freq.sum()) > 0)
    idx = index_from_noise(torch.from_numpy(noise), freq)
    assert idx.shape == (1,) and 0 <= int(idx) < len(freq)
    assert freq[idx] > 0, f"row {int(idx)} has frequency 0 but was chosen"


def test_noise_far_in_the_tail_never_picks_a_row_of_frequency_zero():
    """u = Phi(m) rounds to exactly 1.0 for m > 8.3: the first case hypothesis found (it picked the last row)."""
    freq = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    assert index_from_noise(torch.full((3, 2, 2), 3.0), freq).tolist() == [1]
    assert index_from_noise(torch.full((3, 2, 2), -3.0), freq).tolist() == [0]
    with pytest.raises(ValueError, match="no positive entry"):
        index_from_noise(torch.zeros(3, 2, 2), torch.zeros(4, dtype=torch.float64))


def test_normalising_a_tiny_row_twice_changes_nothing():
    """The second case hypothesis found: a row of norm 2e-16 became a 2e-4 vector, then a unit vector."""
    x = torch.tensor([[2.2204e-16, 0.0], [3.0, 4.0]])
    assert torch.equal(normalize(normalize(x)), normalize(x))
    assert normalize(x)[0].tolist() == [0.0, 0.0]
    assert normalize(torch.tensor([[math.nan, 1.0]])).isnan().all(), "NaN must stay visible, not become zero"
