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


_BLOCK = 2048  # rows per block of the dense pass: 8 KB of scores
_SCAN = 128  # entries per block of the top-k scan

if _HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True)
    def _row_scores_nb(ids, weights, dense_slot, dense_rows, indptr, rows, vals, n_rows):  # type: ignore[no-untyped-def]
        # the query's frequent terms in one pass over the rows (each dense row read once: memory traffic,
        # not arithmetic, is the cost at 1M rows), then the postings
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
        # a block of rows at a time (its scores stay in the L1 cache), four dense rows per pass: each
        # score still sums its terms in query order, so the result is the row-at-a-time loop's, bit for
        # bit, but the loop over rows runs in SIMD lanes (contiguous views: a range from 0 vectorizes)
        for b0 in range(0, n_rows, _BLOCK):
            b1 = min(b0 + _BLOCK, n_rows)
            a = acc[b0:b1]
            nb = b1 - b0
            j = 0
            while j + 4 <= k:
                r0 = dense_rows[slots[j], b0:b1]
                r1 = dense_rows[slots[j + 1], b0:b1]
                r2 = dense_rows[slots[j + 2], b0:b1]
                r3 = dense_rows[slots[j + 3], b0:b1]
                w0 = wd[j]
                w1 = wd[j + 1]
                w2 = wd[j + 2]
                w3 = wd[j + 3]
                for i in range(nb):
                    a[i] = (((a[i] + w0 * r0[i]) + w1 * r1[i]) + w2 * r2[i]) + w3 * r3[i]
                j += 4
            while j < k:
                r0 = dense_rows[slots[j], b0:b1]
                w0 = wd[j]
                for i in range(nb):
                    a[i] = a[i] + w0 * r0[i]
                j += 1
        for j in range(ids.shape[0]):
            t = ids[j]
            if dense_slot[t] < 0:
                w = weights[j]
                for p in range(indptr[t], indptr[t + 1]):
                    acc[rows[p]] += w * vals[p]
        return acc

    @numba.njit(cache=True, nogil=True)
    def _entry_max_nb(row_scores, row_ptr):  # type: ignore[no-untyped-def]
        n = row_ptr.shape[0] - 1
        out = np.empty(n, np.float32)
        for e in range(n):
            best = row_scores[row_ptr[e]]
            for r in range(row_ptr[e] + 1, row_ptr[e + 1]):
                if row_scores[r] > best:
                    best = row_scores[r]
            out[e] = best
        return out

    @numba.njit(cache=True, nogil=True)
    def _top_nb(scores, ok, k):  # type: ignore[no-untyped-def]
        # the first k allowed-or-not entries fill the slots; a later entry replaces the first slot holding
        # the smallest value when it is strictly larger, so ties at the boundary resolve one fixed way.
        # The smallest slot is found without branches: a replacement costs k steps, not k mispredictions
        n = scores.shape[0]
        kk = min(k, n)
        idx = np.empty(kk, np.int64)
        val = np.empty(kk, np.float32)
        for e in range(kk):
            idx[e] = e
            val[e] = scores[e] if ok[e] else np.float32(-1.0)
        worst, floor = _smallest_slot(val)
        # a block whose largest score is no more than the floor holds no entry that would take a slot
        # (a masked entry counts -1, no more than the floor either): skipped on one SIMD max
        e = kk
        while e < n:
            end = min(e + _SCAN, n)
            if floor < np.float32(-1.0) or _block_max(scores[e:end]) > floor:
                for i in range(e, end):
                    v = scores[i] if ok[i] else np.float32(-1.0)
                    if v > floor:
                        idx[worst] = i
                        val[worst] = v
                        worst, floor = _smallest_slot(val)
            e = end
        return idx

    @numba.njit(cache=True, nogil=True)
    def _smallest_slot(val):  # type: ignore[no-untyped-def]
        # the first slot holding the smallest value, found without branches (k steps, no mispredictions)
        worst = 0
        floor = val[0]
        for j in range(1, val.shape[0]):
            x = val[j]
            lower = x < floor
            worst = j if lower else worst
            floor = x if lower else floor
        return worst, floor

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _block_max(a):  # type: ignore[no-untyped-def]
        # fastmath lets the maximum run in SIMD lanes; a maximum is exact in any order (no NaN here)
        m = a[0]
        for i in range(1, a.shape[0]):
            m = max(m, a[i])
        return m


def int8_scores_numpy(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    """codes [n, d] int8 times q [d] float32: the dense channel's first, approximate pass."""
    return (codes.astype(np.float32) @ q).astype(np.float32)


if _HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _int8_scores_nb(codes, q):  # type: ignore[no-untyped-def]
        # a quarter of the float32 vectors' bytes: at 10k questions the product is bound by memory
        # traffic, which the sentence encoder's weights evict from the cache before every search
        n, d = codes.shape
        out = np.empty(n, np.float32)
        for i in range(n):
            acc = np.float32(0.0)
            for j in range(d):
                acc += np.float32(codes[i, j]) * q[j]
            out[i] = acc
        return out


def int8_scores(codes: np.ndarray, q: np.ndarray, use: str | None = None) -> np.ndarray:
    """codes [n, d] int8 times q [d] float32, on the chosen backend (summation order may differ)."""
    if (use or _active()) == "numba" and codes.size:
        return _int8_scores_nb(codes, q.astype(np.float32, copy=False))  # type: ignore[no-any-return]
    return int8_scores_numpy(codes, q)


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
        rs = row_scores.astype(np.float32, copy=False)
        # one row per entry (most KBs at scale): the rows are the entries, as in the reference
        s_entry = rs if rs.size == row_ptr.size - 1 else _entry_max_nb(rs, row_ptr)
        return s_entry, _top_nb(s_entry, ok, k)
    s_entry = entry_scores_numpy(row_scores, row_ptr)
    return s_entry, top_masked_numpy(s_entry, ok, k)


@functools.cache
def warm_up() -> Any:
    """Compile (or load from numba's cache) the kernels now, not on a customer's first message: for
    arrays built in memory and for the read-only ones a loaded model maps (numba compiles each apart)."""
    if _active() != "numba":
        return None
    out = None
    for readonly in (False, True):
        arrays: list[np.ndarray] = [
            np.array([-1, 0], np.int64),  # dense_slot
            np.ones((1, 2), np.float32),  # dense_rows
            np.array([0, 1, 1], np.int64),  # postings indptr
            np.array([0], np.int32),  # postings rows
            np.ones(1, np.float32),  # postings values
            np.array([0, 1, 2], np.int64),  # row_ptr, one row per entry
            np.array([0, 2], np.int64),  # row_ptr, two rows in one entry
        ]
        for a in arrays:
            a.flags.writeable = not readonly
        slot, dense, indptr, rows, vals, ptr1, ptr2 = arrays
        ids, w = np.array([0, 1], np.int64), np.array([0.6, 0.8], np.float32)
        s = row_scores(ids, w, slot, dense, indptr, rows, vals, 2)
        codes = np.ones((2, 2), np.int8)
        codes.flags.writeable = not readonly
        int8_scores(codes, w)
        entry_scores_top(s, ptr2, np.ones(1, bool), 1)
        out = entry_scores_top(s, ptr1, np.ones(2, bool), 1)
    return out
