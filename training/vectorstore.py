"""Sentence vectors kept on disk between benchmark runs, so the default channels can be measured at 1M.

Encoding is the one stage of a default build that cannot be made cheap here: multilingual-e5-small takes
about 6.5 ms per short question in batches on 2 cores, so a million KB questions take close to two hours
before the index, classifier and calibration start. `StoredVectors` is an `Embedder` that answers from a
directory of chunks and encodes (and appends) only what it has not seen, recording how long each chunk
took to encode. The store can be filled ahead, in pieces that can be stopped and resumed
(`python -m training.vectorstore fill KB.csv DIR`), and a build served from it reports its build time as
its own wall time plus the recorded encoding time of every vector it used, so the figure is what a build
from scratch costs (encoding measured in chunks, the rest measured in one run), and says so.

Bench-only: a served model never reads this store (the matcher keeps its own encoder for messages).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.embed import Embedder, make_embedder

CHUNK = 8192  # vectors per file: a stopped fill loses at most one chunk's work


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class StoredVectors:
    """An embedder backed by `directory`: known texts are read, new ones encoded by `inner` and saved.

    `fresh_seconds_`: encoding time spent in this process; `used_seconds_`: the recorded encoding time of
    every vector returned (stored or fresh), which is what encoding them all from scratch took."""

    def __init__(self, directory: str | os.PathLike[str], inner: Embedder | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._inner = inner
        spec_file = self.directory / "embedder.txt"
        spec = repr(sorted((inner or make_embedder(None)).spec().items()))
        if spec_file.exists() and spec_file.read_text(encoding="utf-8") != spec:
            raise ValueError(
                f"{self.directory}: vectors of another embedder ({spec_file.read_text(encoding='utf-8')}); "
                "use another directory or delete this one"
            )
        spec_file.write_text(spec, encoding="utf-8")
        self._index: dict[bytes, tuple[int, int]] = {}
        self._chunks: list[np.ndarray] = []
        self._seconds: list[float] = []  # per vector, by chunk
        for f in sorted(self.directory.glob("chunk-*.npz")):
            with np.load(f) as z:
                keys, vecs, secs = z["keys"], z["vectors"], float(z["seconds"])
            c = len(self._chunks)
            self._chunks.append(vecs)
            self._seconds.append(secs / max(1, len(vecs)))
            for i, k in enumerate(keys):
                self._index[k.tobytes()] = (c, i)
        self.dim = int(self._chunks[0].shape[1]) if self._chunks else int(self.inner.dim)
        self._pending_keys: list[bytes] = []
        self._pending_vecs: list[np.ndarray] = []
        self._pending_seconds = 0.0
        self.fresh_seconds_ = 0.0
        self.used_seconds_ = 0.0
        self.stored_ = 0
        self.encoded_ = 0

    @property
    def inner(self) -> Embedder:
        if self._inner is None:
            self._inner = make_embedder(None)
        return self._inner

    def __len__(self) -> int:
        return len(self._index) + len(self._pending_keys)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        missing: dict[bytes, list[int]] = {}  # a text new to the store, by key: where it goes in `out`
        pending = {k: i for i, k in enumerate(self._pending_keys)}
        for j, t in enumerate(texts):
            k = _key(t)
            at = self._index.get(k)
            if at is not None:
                out[j] = self._chunks[at[0]][at[1]]
                self.used_seconds_ += self._seconds[at[0]]
                self.stored_ += 1
            elif k in pending:
                out[j] = self._pending_vecs[pending[k]]
                self.used_seconds_ += self._pending_seconds / max(1, len(self._pending_keys))
                self.stored_ += 1
            else:
                missing.setdefault(k, []).append(j)
        if missing:
            t0 = time.perf_counter()
            vecs = self.inner.encode([texts[js[0]] for js in missing.values()])
            dt = time.perf_counter() - t0
            self.fresh_seconds_ += dt
            self.used_seconds_ += dt
            self.encoded_ += len(missing)
            for (k, js), v in zip(missing.items(), vecs, strict=True):
                out[js] = v
                self._pending_keys.append(k)
                self._pending_vecs.append(np.asarray(v, np.float32))
            self._pending_seconds += dt
            if len(self._pending_keys) >= CHUNK:
                self.flush()
        return out

    def flush(self) -> None:
        """Write the vectors encoded since the last flush as one chunk (temp file, then rename)."""
        if not self._pending_keys:
            return
        n = len(list(self.directory.glob("chunk-*.npz")))
        path = self.directory / f"chunk-{n:06d}.npz"
        tmp = path.with_name(path.stem + ".tmp.npz")
        vecs = np.vstack(self._pending_vecs).astype(np.float32)
        # raw bytes, one row per key: numpy's "S" strings would drop a digest's trailing zero bytes
        keys = np.frombuffer(b"".join(self._pending_keys), dtype=np.uint8).reshape(-1, 16)
        np.savez(tmp, keys=keys, vectors=vecs, seconds=np.float64(self._pending_seconds))
        os.replace(tmp, path)
        c = len(self._chunks)
        self._chunks.append(vecs)
        self._seconds.append(self._pending_seconds / len(vecs))
        for i, k in enumerate(self._pending_keys):
            self._index[k] = (c, i)
        self._pending_keys, self._pending_vecs, self._pending_seconds = [], [], 0.0

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()


def build_texts(kb: str | os.PathLike[str]) -> list[str]:
    """The texts a default build encodes for this KB file, in the build's own form."""
    from engine.kb import load_kb
    from engine.normalize import normalize, strip_placeholders

    texts = [strip_placeholders(normalize(q)) for e in load_kb(kb) for q in e.questions()]
    return [t for t in texts if t]


def fill(
    kb: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    inner: Embedder | None = None,
    batch: int = 256,
) -> StoredVectors:
    """Encode every question of `kb` not yet in the store, saving a chunk at a time (stop and resume)."""
    store = StoredVectors(directory, inner=inner)
    todo = [t for t in dict.fromkeys(build_texts(kb)) if _key(t) not in store._index]
    print(f"{len(store):,} vectors stored; {len(todo):,} to encode", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for i in range(0, len(todo), batch):
        store.encode(todo[i : i + batch])
        done = i + batch
        if done % CHUNK == 0 or done >= len(todo):
            rate = (time.perf_counter() - t0) / min(done, len(todo)) * 1e3
            print(f"{min(done, len(todo)):,}/{len(todo):,} ({rate:.2f} ms each)", file=sys.stderr, flush=True)
    store.flush()
    return store


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "fill":
        raise SystemExit("usage: python -m training.vectorstore fill KB.csv DIR")
    fill(sys.argv[2], sys.argv[3])
