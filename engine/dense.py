"""Dense channel: centered sentence vectors in a faiss index, exact for small KBs, HNSW above a size.

Centering (subtracting the KB's mean vector) removes the direction every question shares; on the shared
data it raised e5's top-1 on both sets.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from engine import kernels

INT8_MIN_ROWS = 4096  # below this the float32 product stays in the cache: exact and as fast
RESCORED = (4, 32)  # the int8 pass keeps 4k + 32 rows for the exact float32 pass to rank


def quantize_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes of unit vectors, one scale per dimension (its largest magnitude maps to 127)."""
    scale = (
        (np.abs(vectors).max(axis=0) / 127.0).astype(np.float32) if len(vectors) else np.ones(0, np.float32)
    )
    scale[scale == 0] = 1.0
    return np.clip(np.rint(vectors / scale), -127, 127).astype(np.int8), scale


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    n[n == 0] = 1.0
    return (x / n).astype(np.float32)


@lru_cache(maxsize=1)
def _single_threaded_search() -> None:
    """One query at a time needs no thread team; faiss's OpenMP threads spinning beside the sentence
    encoder's on two cores made rare searches take seconds. The same holds for the BLAS under numpy
    (OpenBLAS's threads spin after each call): with its two threads, an afqmc message's exact search
    (9.4k x 384) took 4 ms instead of 1, and the encoder's team beside them 30 ms instead of 11."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")


class DenseIndex:
    """Inner-product search over centered, re-normalized vectors.

    The exact search of a KB of `INT8_MIN_ROWS` questions or more runs in two passes: int8 codes of the
    vectors (`codes_`, a quarter of their bytes) pick 4k + 32 rows, and those rows' float32 vectors rank
    them. At afqmc's 9.4k questions a default-profile match took 2.8 ms instead of 3.2: the sentence
    encoder's weights and the float32 vectors together exceed this machine's 32 MB cache, so every
    search had read them from memory. The top-k equals the exact one's (tests/test_dense.py)."""

    # The graph's build and search breadth: at 100k e5 vectors, efConstruction 80 / efSearch 128 kept
    # 0.985 of the exact top-5; 200 / 256 keep 0.997 for 0.44 ms a search instead of 0.24 (the encoder
    # takes 7-9 ms) and a build of 23 s instead of 10 (encoding the questions takes 15 minutes).
    def __init__(
        self, ann_threshold: int = 20000, hnsw_m: int = 32, ef_search: int = 256, ef_construction: int = 200
    ) -> None:
        self.ann_threshold = ann_threshold
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ef_construction = ef_construction

    def fit(self, vectors: np.ndarray) -> DenseIndex:
        vectors = np.asarray(vectors, dtype=np.float32)
        self.mean_ = (
            vectors.mean(axis=0).astype(np.float32)
            if len(vectors)
            else np.zeros(vectors.shape[1], np.float32)
        )
        self.vectors_ = _normalize_rows(vectors - self.mean_)
        self.kind_ = "hnsw" if len(vectors) >= self.ann_threshold else "flat"
        self.codes_: np.ndarray | None = None
        self.code_scale_: np.ndarray | None = None
        self._build_index()
        return self

    def _build_index(self) -> None:
        """The HNSW graph above `ann_threshold` rows; below it no index at all: the exact search is one
        product with `vectors_` (which may be memory-mapped), where a faiss flat index would hold a
        second copy of every vector."""
        if self.kind_ != "hnsw":
            self.index_ = None
            if len(self.vectors_) >= INT8_MIN_ROWS and getattr(self, "codes_", None) is None:
                self.codes_, self.code_scale_ = quantize_rows(np.asarray(self.vectors_))
            elif len(self.vectors_) < INT8_MIN_ROWS:
                self.codes_, self.code_scale_ = None, None
            return
        import faiss

        index: Any = faiss.IndexHNSWFlat(self.vectors_.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        index.add(np.ascontiguousarray(self.vectors_))
        self.index_ = index

    def prepare(self, vector: np.ndarray) -> np.ndarray:
        """Center and re-normalize a raw query vector into the index space."""
        _single_threaded_search()
        return _normalize_rows(vector - self.mean_)

    def search(
        self, q: np.ndarray, k: int, row_ok: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows for one prepared query vector: (row ids, inner products). `row_ok` (build-time
        cross-validation hides rows) searches exactly, a hidden row scoring -2 (below any cosine)."""
        k = min(k, self.vectors_.shape[0])
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        _single_threaded_search()
        if (
            self.index_ is None
            and row_ok is None
            and self.codes_ is not None
            and self.code_scale_ is not None
        ):
            return self._search_int8(q.reshape(-1), k, self.codes_, self.code_scale_)
        if self.index_ is None or row_ok is not None:
            sims = self.vectors_ @ q.reshape(-1)
            if row_ok is not None:
                sims = np.where(row_ok, sims, np.float32(-2.0))
            top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
            top = top[np.argsort(-sims[top], kind="stable")]
            return top.astype(np.int64), sims[top].astype(np.float32)
        scores, ids = self.index_.search(q.reshape(1, -1), k)
        ok = ids[0] >= 0
        return ids[0][ok].astype(np.int64), scores[0][ok]

    def _search_int8(
        self, q: np.ndarray, k: int, codes: np.ndarray, scale: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        approx = kernels.int8_scores(codes, q * scale)
        keep = min(len(approx), RESCORED[0] * k + RESCORED[1])
        rows = np.argpartition(-approx, keep - 1)[:keep] if keep < len(approx) else np.arange(len(approx))
        rows = np.sort(rows)  # equal scores: the lower row first, whatever argpartition returned
        sims = np.asarray(self.vectors_[rows] @ q, np.float32)
        order = np.argsort(-sims, kind="stable")[:k]
        return rows[order].astype(np.int64), sims[order]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("index_", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "vectors_" in state:
            self._build_index()
