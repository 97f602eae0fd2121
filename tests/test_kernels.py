"""The compiled sparse kernels return what the numpy reference returns, on any index and query."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import kernels
from engine.sparse import SparseIndex

pytestmark = pytest.mark.skipif(kernels.backend() != "numba", reason="numba is not installed")


@st.composite
def index_and_query(draw: st.DrawFn) -> tuple[SparseIndex, np.ndarray, np.ndarray]:
    vocab = [f"t{i}" for i in range(draw(st.integers(1, 30)))]
    docs = draw(st.lists(st.lists(st.sampled_from(vocab), min_size=0, max_size=8), min_size=1, max_size=40))
    dense_df = draw(st.sampled_from([0.0, 0.05, 0.3, 2.0]))
    budget = draw(st.sampled_from([64.0, 1e-5]))
    idx = SparseIndex(dense_df=dense_df, dense_budget_mb=budget).fit(docs)
    terms = draw(st.lists(st.sampled_from([*vocab, "unknown"]), min_size=0, max_size=10))
    ids, w, _ = idx.vectorize(terms)
    return idx, ids, w


@settings(max_examples=150, deadline=None)
@given(index_and_query())
def test_row_scores_match_the_reference(case: tuple[SparseIndex, np.ndarray, np.ndarray]) -> None:
    idx, ids, w = case
    fast = idx.scores(ids, w, use="numba")
    ref = idx.scores(ids, w, use="numpy")
    assert fast.dtype == np.float32 and fast.shape == ref.shape == (idx.n_docs_,)
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)


def test_dense_budget_bounds_the_dense_rows() -> None:
    docs = [["a", "b", "c", f"x{i}"] for i in range(1000)]
    unbounded = SparseIndex(dense_df=0.01).fit(docs)
    assert unbounded.dense_rows_.shape[0] == 3
    bounded = SparseIndex(dense_df=0.01, dense_budget_mb=2 * 4 * 1000 / 1024 / 1024).fit(docs)
    assert bounded.dense_rows_.shape[0] == 2
    ids, w, _ = bounded.vectorize(["a", "b", "c", "x7"])
    np.testing.assert_allclose(bounded.scores(ids, w), unbounded.scores(ids, w), rtol=1e-5, atol=1e-6)


def test_backend_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_SPARSE_BACKEND", "numpy")
    assert kernels.backend() == "numpy"
    monkeypatch.setenv("KEFU_SPARSE_BACKEND", "fortran")
    with pytest.raises(ValueError, match="KEFU_SPARSE_BACKEND must be one of numba, numpy"):
        kernels.backend()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=60).flatmap(
        lambda sizes: st.tuples(
            st.just(sizes),
            st.lists(st.floats(0, 1, width=32, allow_nan=False), min_size=sum(sizes), max_size=sum(sizes)),
            st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)),
        )
    ),
    st.integers(1, 25),
)
def test_entry_scores_top_matches_the_reference(
    case: tuple[list[int], list[float], list[bool]], k: int
) -> None:
    sizes, scores, ok_list = case
    ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows, ok = np.asarray(scores, np.float32), np.asarray(ok_list, bool)
    s_fast, top_fast = kernels.entry_scores_top(rows, ptr, ok, k, use="numba")
    s_ref, top_ref = kernels.entry_scores_top(rows, ptr, ok, k, use="numpy")
    np.testing.assert_array_equal(s_fast, s_ref)
    assert len(set(top_fast.tolist())) == top_fast.size == top_ref.size
    masked = np.where(ok, s_ref, -1.0)
    np.testing.assert_array_equal(np.sort(masked[top_fast]), np.sort(masked[top_ref]))


def top_slots(scores: list[float], ok: list[bool], k: int) -> list[int]:
    """The k best allowed entries (not allowed count as -1), filled slot by slot: the first k take the
    slots, and a later entry replaces the first slot holding the smallest value when it is strictly
    larger. Which of several equal scores at the boundary is kept follows from that order alone."""
    n = len(scores)
    kk = min(k, n)
    idx = list(range(kk))
    val = [scores[e] if ok[e] else -1.0 for e in range(kk)]
    worst = val.index(min(val)) if kk else 0
    for e in range(kk, n):
        v = scores[e] if ok[e] else -1.0
        if v > val[worst]:
            idx[worst], val[worst] = e, v
            worst = val.index(min(val))
    return idx


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=1, max_size=80).flatmap(
        lambda s: st.tuples(st.just(s), st.lists(st.booleans(), min_size=len(s), max_size=len(s)))
    ),
    st.integers(1, 25),
)
def test_top_k_keeps_the_same_entries_among_ties(case: tuple[list[float], list[bool]], k: int) -> None:
    """Scores drawn from four values tie at the boundary all the time: the compiled top-k returns the
    slot-by-slot reference's entries in its slot order, so a ranking never depends on the backend's mood."""
    scores, ok_list = case
    rows = np.asarray(scores, np.float32)
    ptr = np.arange(rows.size + 1, dtype=np.int64)
    _, top = kernels.entry_scores_top(rows, ptr, np.asarray(ok_list, bool), k, use="numba")
    assert top.tolist() == top_slots(scores, ok_list, k)
