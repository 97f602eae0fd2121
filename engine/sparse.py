"""Sparse channel: TF-IDF over words and character 1-2 grams, queried through an inverted index.

A query touches only the posting lists of its own terms (`np.bincount` over their concatenation), so the
cost follows the postings of the query's terms, not the size of the KB, and there is no Python loop over
documents.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

WORD_PREFIX = "#"


def query_terms(words: Sequence[str], chars: Sequence[str]) -> list[str]:
    """One bag of terms: words (prefixed so a one-character word is not its character) and char n-grams."""
    return [WORD_PREFIX + w for w in words] + list(chars)


class SparseIndex:
    """TF-IDF (sublinear tf, smooth idf, L2 rows) with term -> (rows, weights) postings."""

    def __init__(self, dense_df: float = 0.01) -> None:
        self.dense_df = dense_df

    def fit(self, docs: Sequence[Sequence[str]]) -> SparseIndex:
        vocab: dict[str, int] = {}
        indptr = [0]
        indices: list[int] = []
        counts: list[int] = []
        for doc in docs:
            for term, c in Counter(doc).items():
                indices.append(vocab.setdefault(term, len(vocab)))
                counts.append(c)
            indptr.append(len(indices))
        n_docs = len(docs)
        tf = sp.csr_matrix(
            (np.asarray(counts, dtype=np.float64), np.asarray(indices, dtype=np.int64), indptr),
            shape=(n_docs, len(vocab)),
        )
        df = np.bincount(tf.indices, minlength=len(vocab))
        self.df_ = df
        self.idf_ = (np.log((1 + n_docs) / (1 + df)) + 1.0).astype(np.float32)
        self.vocabulary_ = vocab
        self.n_docs_ = n_docs
        X = self._weigh(tf)
        post = X.T.tocsr()  # term -> rows
        post.sort_indices()
        # frequent terms would dominate the postings walk: keep their rows as dense vectors instead
        dense_terms = np.flatnonzero(df >= max(2.0, self.dense_df * n_docs))
        self.dense_slot_ = np.full(len(vocab), -1, np.int64)
        self.dense_slot_[dense_terms] = np.arange(dense_terms.size)
        self.dense_rows_ = np.ascontiguousarray(post[dense_terms].toarray(), dtype=np.float32)
        keep = np.ones(len(vocab), bool)
        keep[dense_terms] = False
        post = sp.diags(keep.astype(np.float64)) @ post
        post = sp.csr_matrix(post)
        post.eliminate_zeros()
        self.post_indptr_ = post.indptr.astype(np.int64)
        self.post_rows_ = post.indices.astype(np.int32)
        self.post_vals_ = post.data.astype(np.float32)
        return self

    def _weigh(self, tf: sp.csr_matrix) -> sp.csr_matrix:
        X = tf.astype(np.float64)
        X.data = 1.0 + np.log(X.data)
        X = X @ sp.diags(self.idf_.astype(np.float64))
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ X)

    def transform(self, docs: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Row-normalized TF-IDF matrix of documents (unknown terms dropped), for training models."""
        vocab = self.vocabulary_
        indptr = [0]
        indices: list[int] = []
        counts: list[int] = []
        for doc in docs:
            for term, c in Counter(t for t in doc if t in vocab).items():
                indices.append(vocab[term])
                counts.append(c)
            indptr.append(len(indices))
        tf = sp.csr_matrix(
            (np.asarray(counts, dtype=np.float64), np.asarray(indices, dtype=np.int64), indptr),
            shape=(len(docs), len(vocab)),
        )
        return self._weigh(tf)

    def vectorize(self, terms: Sequence[str]) -> tuple[np.ndarray, np.ndarray, float]:
        """Query vector as (term ids, L2-normalized weights) and the share of distinct unknown terms."""
        vocab = self.vocabulary_
        counts: dict[int, int] = {}
        unknown: set[str] = set()
        for t in terms:
            i = vocab.get(t)
            if i is None:
                unknown.add(t)
            else:
                counts[i] = counts.get(i, 0) + 1
        oov = len(unknown) / (len(unknown) + len(counts)) if terms else 1.0
        if not counts:
            return np.empty(0, np.int64), np.empty(0, np.float32), oov
        ids = np.fromiter(counts.keys(), np.int64, len(counts))
        w = (1.0 + np.log(np.fromiter(counts.values(), np.float32, len(counts)))) * self.idf_[ids]
        w /= np.sqrt(np.dot(w, w))
        return ids, w, oov

    def scores(self, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Cosine of the query with every document row (dense array; zero where no term is shared)."""
        if ids.size == 0:
            return np.zeros(self.n_docs_, np.float32)
        slots = self.dense_slot_[ids]
        frequent = slots >= 0
        if frequent.any():
            base = weights[frequent] @ self.dense_rows_[slots[frequent]]
            ids, weights = ids[~frequent], weights[~frequent]
        else:
            base = None
        starts = self.post_indptr_[ids]
        lens = self.post_indptr_[ids + 1] - starts
        total = int(lens.sum())
        # gather the postings of all query terms without a Python loop per term
        offs = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)
        rows = self.post_rows_[offs]
        vals = self.post_vals_[offs] * np.repeat(weights, lens)
        out = np.bincount(rows, weights=vals, minlength=self.n_docs_).astype(np.float32)
        if base is not None:
            out += base
        return out
