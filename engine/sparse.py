"""Sparse channel: TF-IDF over words and character 1-2 grams, queried through an inverted index.

A query touches only the posting lists of its own terms (`np.bincount` over their concatenation), so the
cost follows the postings of the query's terms, not the size of the KB, and there is no Python loop over
documents.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import cast

import numpy as np
import scipy.sparse as sp

from engine import kernels

WORD_PREFIX = "#"


def query_terms(words: Sequence[str], chars: Sequence[str]) -> list[str]:
    """One bag of terms: words (prefixed so a one-character word is not its character) and char n-grams."""
    return [WORD_PREFIX + w for w in words] + list(chars)


class SparseIndex:
    """TF-IDF (sublinear tf, smooth idf, L2 rows) with term -> (rows, weights) postings."""

    def __init__(self, dense_df: float = 0.01, dense_budget_mb: float = 64.0) -> None:
        """`dense_df`: terms in at least this share of rows are kept as dense rows (a sequential pass is
        cheaper than their long postings); at most `dense_budget_mb` of them, the most frequent first, so
        a 1M-question KB does not hold gigabytes of dense rows."""
        self.dense_df = dense_df
        self.dense_budget_mb = dense_budget_mb

    def fit(self, docs: Sequence[Sequence[str]]) -> SparseIndex:
        self.fit_transform(docs)
        return self

    def fit_transform(self, docs: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Fit, and return the documents' TF-IDF rows (`transform(docs)` without a second pass)."""
        vocab: dict[str, int] = {}
        n_docs = len(docs)
        lens = np.fromiter(map(len, docs), np.int64, n_docs)
        # one pass over all terms (ids in order of first appearance); repeats within a row are summed
        # by the sparse constructor rather than counted per document in Python
        codes = np.fromiter(
            (vocab.setdefault(t, len(vocab)) for doc in docs for t in doc), np.int64, int(lens.sum())
        )
        tf = sp.csr_matrix(
            sp.coo_matrix(
                (np.ones(codes.size), (np.repeat(np.arange(n_docs), lens), codes)),
                shape=(n_docs, len(vocab)),
            )
        )
        tf.sum_duplicates()
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
        budget = int(self.dense_budget_mb * 1024 * 1024 / (4 * max(n_docs, 1)))
        if dense_terms.size > budget:
            dense_terms = np.sort(dense_terms[np.argsort(-df[dense_terms], kind="stable")[:budget]])
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
        return X

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
        """Query vector as (term ids, L2-normalized weights) and the share of distinct unknown terms.

        Counted with a Counter over the looked-up ids (C loops, no numpy per term): a message has a few
        dozen terms, so numpy's per-call cost, not arithmetic, is what a query pays here."""
        if not terms:
            return np.empty(0, np.int64), np.empty(0, np.float32), 1.0
        found = list(map(self.vocabulary_.get, terms))
        n_unknown = 0
        if None in found:
            n_unknown = len({t for t, i in zip(terms, found, strict=True) if i is None})
            found = [i for i in found if i is not None]
        counts = Counter(cast("list[int]", found))
        if not counts:
            return np.empty(0, np.int64), np.empty(0, np.float32), 1.0
        keys = sorted(counts)
        ids = np.array(keys, np.int64)
        w = (1.0 + np.log(np.array([counts[i] for i in keys], np.float32))) * self.idf_[ids]
        w /= np.sqrt(np.dot(w, w))
        return ids, w, n_unknown / (n_unknown + len(keys))

    def scores(self, ids: np.ndarray, weights: np.ndarray, use: str | None = None) -> np.ndarray:
        """Cosine of the query with every document row (dense array; zero where no term is shared)."""
        return kernels.row_scores(
            ids,
            weights,
            self.dense_slot_,
            self.dense_rows_,
            self.post_indptr_,
            self.post_rows_,
            self.post_vals_,
            self.n_docs_,
            use,
        )
