"""The sparse channel's query-path loop, compiled (numba) with a numpy reference of the same result.

One message's sparse scoring is: walk the postings of its terms into per-row scores, take each entry's
best row, and pick the best few entries among those that may be offered. numpy needs several passes and
temporary arrays for that (gather, repeat, bincount, reduceat, argpartition); the compiled loop makes one
pass over the postings and one over the entries, which is what keeps a 1M-question KB inside its latency
budget. Both backends return the same arrays (tests/test_kernels.py); `KEFU_SPARSE_BACKEND=numpy` (read
once per process) forces the reference, and it is used when numba is not importable.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

BACKENDS = ("numba", "numpy")

try:  # numba is a runtime dependency; the reference keeps the engine importable without it
    import numba

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _HAVE_NUMBA = False


def backend() -> str:
    """The backend in use: KEFU_SPARSE_BACKEND if set (numba or numpy), else numba when importable."""
    wanted = os.environ.get("KEFU_SPARSE_BACKEND", "").strip().lower()
    if wanted and wanted not in BACKENDS:
        raise ValueError(f"KEFU_SPARSE_BACKEND must be one of {', '.join(BACKENDS)}, got {wanted!r}")
    if wanted == "numba" and not _HAVE_NUMBA:
        raise ImportError("KEFU_SPARSE_BACKEND=numba but numba is not installed: pip install numba")
    if wanted:
        return wanted
    return "numba" if _HAVE_NUMBA else "numpy"


@functools.cache
def _active() -> str:
    """The backend the query path uses, resolved once per process (not an environment read per query)."""
    return backend()


# --------------------------------------------------------------------------- numpy reference


def row_scores_numpy(
    ids: np.ndarray,
    weights: np.ndarray,
    dense_slot: np.ndarray,
    dense_rows: np.ndarray,
    indptr: np.ndarray,
    rows: np.ndarray,
    vals: np.ndarray,
    n_rows: int,
) -> np.ndarray:
    """Per-row cosine of the query with every KB row (float32, zero where no term is shared)."""
    if ids.size == 0:
        return np.zeros(n_rows, np.float32)
    slots = dense_slot[ids]
    frequent = slots >= 0
    base = None
    if frequent.any():
        base = weights[frequent] @ dense_rows[slots[frequent]]
        ids, weights = ids[~frequent], weights[~frequent]
    starts = indptr[ids]
    lens = indptr[ids + 1] - starts
    total = int(lens.sum())
    # gather the postings of all query terms without a Python loop per term
    offs = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)
    vals_q = vals[offs] * np.repeat(weights, lens)
    out = np.bincount(rows[offs], weights=vals_q, minlength=n_rows).astype(np.float32)
    if base is not None:
        out += base
    return out


def top_masked_numpy(scores: np.ndarray, ok: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores among `ok` (not-ok count as -1), in no particular order."""
    s = np.where(ok, scores, -1.0)
    if s.size <= k:
        return np.arange(s.size)
    return np.argpartition(-s, k - 1)[:k]


def entry_scores_numpy(row_scores: np.ndarray, row_ptr: np.ndarray) -> np.ndarray:
    """Each entry's best row score (entries own consecutive rows)."""
    if row_scores.size == 0:
        return row_scores
    if row_ptr.size - 1 == row_scores.size:
        return row_scores
    return np.maximum.reduceat(row_scores, row_ptr[:-1])


# --------------------------------------------------------------------------- numba


if _HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True)
    def _row_scores_nb(ids, weights, dense_slot, dense_rows, indptr, rows, vals, n_rows):  # type: ignore[no-untyped-def]
        # the query's frequent terms in one pass over the rows (each dense row read once, the output
        # written once: memory traffic, not arithmetic, is the cost at 1M rows), then the postings
        k = 0
        for j in range(ids.shape[0]):
            if dense_slot[ids[j]] >= 0:
                k += 1
        slots = np.empty(k, np.int64)
        wd = np.empty(k, np.float32)
        k = 0
        for j in range(ids.shape[0]):
            s = dense_slot[ids[j]]
            if s >= 0:
                slots[k] = s
                wd[k] = weights[j]
                k += 1
        acc = np.zeros(n_rows, np.float32)
        if k:
            for i in range(n_rows):
                v = np.float32(0.0)
                for j in range(k):
                    v += wd[j] * dense_rows[slots[j], i]
                acc[i] = v
        for j in range(ids.shape[0]):
            t = ids[j]
            if dense_slot[t] < 0:
                w = weights[j]
                for p in range(indptr[t], indptr[t + 1]):
                    acc[rows[p]] += w * vals[p]
        return acc

    @numba.njit(cache=True, nogil=True)
    def _entry_top_nb(row_scores, row_ptr, ok, k):  # type: ignore[no-untyped-def]
        # each entry's best row and the k best allowed entries in the same pass over the rows
        n = row_ptr.shape[0] - 1
        out = np.empty(n, np.float32)
        kk = min(k, n)
        idx = np.empty(kk, np.int64)
        val = np.full(kk, np.float32(-2.0))
        worst = 0
        for e in range(n):
            best = row_scores[row_ptr[e]]
            for r in range(row_ptr[e] + 1, row_ptr[e + 1]):
                if row_scores[r] > best:
                    best = row_scores[r]
            out[e] = best
            v = best if ok[e] else np.float32(-1.0)
            if e < kk:
                idx[e] = e
                val[e] = v
                if e == kk - 1:
                    worst = 0
                    for j in range(1, kk):
                        if val[j] < val[worst]:
                            worst = j
            elif v > val[worst]:
                idx[worst] = e
                val[worst] = v
                worst = 0
                for j in range(1, kk):
                    if val[j] < val[worst]:
                        worst = j
        return out, idx


def row_scores(
    ids: np.ndarray,
    weights: np.ndarray,
    dense_slot: np.ndarray,
    dense_rows: np.ndarray,
    indptr: np.ndarray,
    rows: np.ndarray,
    vals: np.ndarray,
    n_rows: int,
    use: str | None = None,
) -> np.ndarray:
    """Per-row cosine of the query with every KB row, on the chosen backend."""
    if (use or _active()) == "numba" and ids.size:
        return _row_scores_nb(  # type: ignore[no-any-return]
            ids.astype(np.int64, copy=False),
            weights.astype(np.float32, copy=False),
            dense_slot,
            dense_rows,
            indptr,
            rows,
            vals,
            n_rows,
        )
    return row_scores_numpy(ids, weights, dense_slot, dense_rows, indptr, rows, vals, n_rows)


def entry_scores_top(
    row_scores: np.ndarray, row_ptr: np.ndarray, ok: np.ndarray, k: int, use: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's best row score and the k best entries among `ok` (unordered), on the chosen backend."""
    if (use or _active()) == "numba" and row_scores.size:
        return _entry_top_nb(row_scores.astype(np.float32, copy=False), row_ptr, ok, k)  # type: ignore[no-any-return]
    s_entry = entry_scores_numpy(row_scores, row_ptr)
    return s_entry, top_masked_numpy(s_entry, ok, k)


@functools.cache
def warm_up() -> Any:
    """Compile (or load from numba's cache) the kernels now, not on a customer's first message."""
    if _active() != "numba":
        return None
    ids = np.array([0, 1], np.int64)
    w = np.array([0.6, 0.8], np.float32)
    slot = np.array([-1, 0], np.int64)
    dense = np.ones((1, 2), np.float32)
    s = row_scores(
        ids, w, slot, dense, np.array([0, 1, 1], np.int64), np.array([0], np.int32), np.ones(1, np.float32), 2
    )
    return entry_scores_top(s, np.array([0, 1, 2], np.int64), np.ones(2, bool), 1)
