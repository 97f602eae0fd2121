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
