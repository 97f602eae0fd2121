"""A cold start from a shop's chat history: a first KB, paraphrases for an existing one, labelled traffic.

Agents answer the same question with the same words (their quick phrases, lightly edited), so the
agents' replies are the labels: (customer question, agent reply) pairs are grouped by reply (character
n-gram cosine, average linkage), and a group asked in several ways is a KB entry in the making, its
questions the paraphrases and its most common reply the answer. Small talk is left out (the engine's
own detector), and so are replies too short to be an answer (好的亲).

With an existing KB: a group whose reply is an entry's answer gives that entry paraphrases (the
questions it does not already hold) and labelled traffic for `kefu calibrate` (question, entry id);
any other group is proposed as a new entry, and labelled out of scope (the agents said something no
entry says, so any answer of the KB would have been wrong). Without a KB every group is a proposal.
Rows are in the KB's own format (engine.mining.Proposal.to_row's columns), so the merchant reviews them in
Excel and uploads them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import TfidfVectorizer

from engine.kb import KBEntry
from engine.normalize import normalize
from engine.smalltalk import SmallTalkDetector

ANSWER_SAME = 0.6  # character-gram cosine at which two replies are one answer (edits around a quick phrase)
MIN_ANSWER_CHARS = 8  # shorter replies (好的亲, 在的) answer nothing
MIN_QUESTIONS = 2  # distinct questions a group needs to be proposed as an entry
MAX_EXAMPLES = 20


@dataclass
class ColdStart:
    rows: list[dict[str, str]]  # proposals in the KB's columns (plus proposal, cluster_size ...)
    # (customer question, entry id) for `kefu calibrate`; None: the agents answered it with something no
    # entry says, so any answer of the KB would have been wrong (out of scope for this KB)
    labelled: list[tuple[str, str | None]]
    figures: dict[str, int] = field(default_factory=dict)


def _reply_core(text: str) -> str:
    """A reply without the agent's habits around the answer (亲，您好， at the start)."""
    t = normalize(text)
    for head in ("亲 ", "亲，", "亲", "您好 ", "您好，", "您好"):
        if t.startswith(head):
            t = t[len(head) :]
    return t


def _groups(answers: Sequence[str]) -> np.ndarray:
    """A label per reply: replies that are one answer share it."""
    unique = sorted(set(answers))
    if len(unique) == 1:
        return np.zeros(len(answers), int)
    X = TfidfVectorizer(analyzer="char", ngram_range=(2, 3), sublinear_tf=True).fit_transform(
        [_reply_core(a) for a in unique]
    )
    sims = np.clip((X @ X.T).toarray(), 0.0, 1.0)
    labels = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=1.0 - ANSWER_SAME
    ).fit_predict(1.0 - sims)
    of = dict(zip(unique, labels.tolist(), strict=True))
    return np.asarray([of[a] for a in answers])


def _entry_for(answer: str, entries: Sequence[KBEntry]) -> KBEntry | None:
    """The entry whose answer (or one of its variants) this reply is, if any."""
    if not entries:
        return None
    texts = [(e, a) for e in entries for a in e.answers()]
    vec = TfidfVectorizer(analyzer="char", ngram_range=(2, 3), sublinear_tf=True).fit(
        [_reply_core(a) for _, a in texts] + [_reply_core(answer)]
    )
    A = vec.transform([_reply_core(a) for _, a in texts])
    q = vec.transform([_reply_core(answer)])
    sims = (A @ q.T).toarray().ravel()
    best = int(np.argmax(sims))
    return texts[best][0] if sims[best] >= ANSWER_SAME else None


def _central(questions: Sequence[str]) -> str:
    """The question most like the others (character n-grams): the group's standard question."""
    if len(questions) <= 2:
        return min(questions, key=len)
    X = TfidfVectorizer(analyzer="char", ngram_range=(1, 2)).fit_transform([normalize(q) for q in questions])
    return questions[int(np.argmax((X @ X.T).toarray().sum(axis=1)))]


def cold_start(pairs: Sequence[tuple[str, str]], entries: Sequence[KBEntry] = ()) -> ColdStart:
    """Proposals and labelled traffic from (customer question, agent reply) pairs; see the module."""
    detector = SmallTalkDetector()
    kept: list[tuple[str, str]] = []
    for question, answer in pairs:
        st = detector.parse(normalize(question))
        if st.pure or not st.rest or len(normalize(answer)) < MIN_ANSWER_CHARS:
            continue
        kept.append((question, answer))
    figures = {
        "pairs": len(pairs),
        "pairs_used": len(kept),
        "groups": 0,
        "new_entries": 0,
        "paraphrase_sets": 0,
    }
    if not kept:
        return ColdStart([], [], figures)
    labels = _groups([a for _, a in kept])
    rows: list[dict[str, str]] = []
    labelled: list[tuple[str, str | None]] = []
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        by_label.setdefault(label, []).append(i)
    figures["groups"] = len(by_label)
    ordered = sorted(by_label.values(), key=lambda idx: -len({kept[i][0] for i in idx}))
    for idx in ordered:
        questions = list(dict.fromkeys(kept[i][0] for i in idx))
        answer = Counter(kept[i][1] for i in idx).most_common(1)[0][0]
        entry = _entry_for(answer, entries)
        if entry is not None:
            labelled += [(q, entry.id) for q in questions]
            known = {normalize(t) for t in entry.questions()}
            new = [q for q in questions if normalize(q) not in known][:MAX_EXAMPLES]
            if new:
                figures["paraphrase_sets"] += 1
                rows.append(
                    {
                        "id": entry.id,
                        "question": entry.question,
                        "similar": "|".join([*entry.similar, *new]),
                        "answer": entry.answer,
                        "category": entry.category or "",
                        "proposal": "paraphrases",
                        "cluster_size": str(len(idx)),
                        "new_paraphrases": "|".join(new),
                        "closest_entry": entry.id,
                        "last_seen": "",
                    }
                )
            continue
        if entries:
            labelled += [(q, None) for q in questions]
        if len(questions) < MIN_QUESTIONS:
            continue
        figures["new_entries"] += 1
        head = _central(questions)
        rows.append(
            {
                "id": f"chat-{figures['new_entries']:03d}",
                "question": head,
                "similar": "|".join(q for q in questions if q != head)[:2000],
                "answer": answer,  # the agents' own reply: the merchant checks it before uploading
                "category": "",
                "proposal": "new_entry",
                "cluster_size": str(len(idx)),
                "new_paraphrases": "",
                "closest_entry": "",
                "last_seen": "",
            }
        )
    return ColdStart(rows, labelled, figures)


def recovered(rows: Sequence[dict[str, str]], entries: Sequence[KBEntry]) -> set[str]:
    """The entries of a KB that proposed new entries give back (their reply is the entry's answer)."""
    found = set()
    for r in rows:
        if r["proposal"] == "new_entry" and (e := _entry_for(r["answer"], entries)) is not None:
            found.add(e.id)
    return found


def as_kb_entries(rows: Sequence[dict[str, Any]]) -> list[KBEntry]:
    """Proposal rows as entries (for building a first model from them)."""
    return [
        KBEntry(
            r["id"],
            r["question"],
            r["answer"],
            similar=tuple(s for s in str(r["similar"]).split("|") if s),
            category=r.get("category") or "",
        )
        for r in rows
        if r["answer"]
    ]
