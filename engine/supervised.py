"""Supervised channel: a linear classifier over entries, trained on the KB's own questions.

Only worth it where entries carry paraphrases (several rows per class). At query time the learned
weights are applied directly (term-major sparse part, dense part as one matvec) instead of going through
scikit-learn's `predict_proba`, whose input validation alone costs more than the whole sparse channel.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class EntryClassifier:
    """Multinomial logistic regression on [TF-IDF | centered sentence vector] features."""

    def __init__(
        self, C: float = 10.0, max_iter: int = 200, tol: float = 1e-3, max_sparse_weights: int = 20_000_000
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.max_sparse_weights = max_sparse_weights

    def fit(
        self,
        X_sparse: sp.csr_matrix | None,
        X_dense: np.ndarray | None,
        y: np.ndarray,
        n_classes: int,
        terms: np.ndarray | None = None,
    ) -> EntryClassifier:
        """`terms`: the term columns to learn weights for (others get none); all when None."""
        from sklearn.linear_model import LogisticRegression

        n_terms = 0 if X_sparse is None else X_sparse.shape[1]
        if terms is None:
            terms = np.arange(n_terms)
        if X_sparse is not None and terms.size * n_classes > self.max_sparse_weights:
            X_sparse = None  # the term-major weight table would not fit a reasonable memory budget
        X_terms = None if X_sparse is None else X_sparse[:, terms]
        parts = [m for m in (X_terms, None if X_dense is None else sp.csr_matrix(X_dense)) if m is not None]
        X = sp.hstack(parts).tocsr()
        classes = np.unique(y)
        # tol 1e-3 instead of sklearn's 1e-4: 3x faster fits (a build fits one per CV fold), same accuracy
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
        lr.fit(X, y)
        coef = lr.coef_.astype(np.float32)
        if len(classes) == 2:  # sklearn folds a two-class problem into one row
            coef = np.vstack([-coef[0], coef[0]])
            intercept = np.array([-lr.intercept_[0], lr.intercept_[0]], np.float32)
        else:
            intercept = lr.intercept_.astype(np.float32)
        n_sparse = 0 if X_terms is None else X_terms.shape[1]
        self.classes_ = classes.astype(np.int64)
        self.n_classes_ = n_classes
        self.uses_sparse_ = X_sparse is not None
        # term-major (terms, classes) over the whole vocabulary, zero rows for terms without weights
        self.sparse_coef_ = np.zeros((n_terms if X_sparse is not None else 0, len(intercept)), np.float32)
        if X_sparse is not None:
            self.sparse_coef_[terms] = coef[:, :n_sparse].T
        self.dense_coef_ = np.ascontiguousarray(coef[:, n_sparse:])  # (classes, dim)
        self.intercept_ = intercept
        return self

    def predict_proba_one(self, ids: np.ndarray, weights: np.ndarray, dense: np.ndarray | None) -> np.ndarray:
        """P(entry) for one query, over all KB entries (zeros for entries without a class)."""
        z = self.intercept_.copy()
        if self.uses_sparse_ and ids.size:
            z += weights @ self.sparse_coef_[ids]
        if dense is not None and self.dense_coef_.shape[1]:
            z += self.dense_coef_ @ dense
        z -= z.max()
        np.exp(z, out=z)
        z /= z.sum()
        out = np.zeros(self.n_classes_, np.float32)
        out[self.classes_] = z
        return out

    def predict_proba(self, X_sparse: sp.csr_matrix | None, X_dense: np.ndarray | None) -> np.ndarray:
        """Batch version for build-time cross-validation."""
        n = X_sparse.shape[0] if X_sparse is not None else len(X_dense)  # type: ignore[arg-type]
        z = np.tile(self.intercept_, (n, 1))
        if self.uses_sparse_ and X_sparse is not None:
            z += np.asarray(X_sparse @ self.sparse_coef_)
        if X_dense is not None and self.dense_coef_.shape[1]:
            z += X_dense @ self.dense_coef_.T
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        out = np.zeros((n, self.n_classes_), np.float32)
        out[:, self.classes_] = z
        return out
