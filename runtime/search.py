"""Cosine top-k over a feature cache, exact with numpy or through an optional FAISS index.

Why exact by default: a cache of 100k DINOv2-S rows is 150 MB and a query costs one
matrix-vector product, far below the cost of embedding the query. FAISS
(``simx-embed[faiss]``) is there for caches where that stops being true.

Scores are inner products of L2-normalized rows, i.e. cosines. Ties are broken by
row index (lowest first), so results are reproducible across runs and machines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ModelFileError, SimxError

TEXT_SUFFIX = "-text"
FAISS_FILE = "faiss.index"
FAISS_META = "faiss.json"
_CHUNK = 1024  # query rows per score block: bounds memory to _CHUNK * N floats


class SearchError(SimxError):
    """A search that cannot run as asked (empty cache, wrong dimension, missing faiss)."""


# ----------------------------------------------------------------------------- exact
def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise SearchError(f"{name} must be [N, D], got shape {x.shape}")
    return x


def _stable_topk_row(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, descending, ties by lower index.

    argpartition alone picks arbitrary members of a tie at the cut; taking every
    index at or above the k-th value and sorting by (-score, index) fixes that.
    """
    n = scores.shape[0]
    if k >= n:
        cand = np.arange(n)
    else:
        part = np.argpartition(-scores, k - 1)[:k]
        cand = np.flatnonzero(scores >= scores[part].min())
    order = np.lexsort((cand, -scores[cand]))
    return cand[order[:k]]


def topk(queries: np.ndarray, db: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: ([Q, k] int64 row indices, [Q, k] float32 scores).

    ``db`` may be a read-only memmap; it is read in full once per query block.
    """
    q = _as_matrix(queries, "queries")
    if db.ndim != 2 or db.shape[0] == 0:
        raise SearchError("the cache is empty: nothing to search")
    if q.shape[1] != db.shape[1]:
        raise SearchError(f"query dimension {q.shape[1]} != cache dimension {db.shape[1]}")
    if k < 1:
        raise SearchError(f"k must be at least 1, got {k}")
    k = min(k, db.shape[0])
    idx = np.empty((q.shape[0], k), np.int64)
    val = np.empty((q.shape[0], k), np.float32)
    if not np.isfinite(q).all():
        raise SearchError("a query vector is not finite (NaN or inf): the model failed on it")
    for s in range(0, q.shape[0], _CHUNK):
        block = q[s : s + _CHUNK] @ np.asarray(db, dtype=np.float32).T
        # A non-finite row (a foreign or damaged cache) ranks last instead of breaking the cut.
        block[~np.isfinite(block)] = -np.inf
        for r, row in enumerate(block):
            top = _stable_topk_row(row, k)
            idx[s + r] = top
            val[s + r] = row[top]
    return idx, val


def rank_all(queries: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Full rankings [Q, N] by descending cosine, ties by lower index (for mAP)."""
    q = _as_matrix(queries, "queries")
    out = np.empty((q.shape[0], db.shape[0]), np.int64)
    for s in range(0, q.shape[0], _CHUNK):
        block = q[s : s + _CHUNK] @ np.asarray(db, dtype=np.float32).T
        block[~np.isfinite(block)] = -np.inf
        out[s : s + _CHUNK] = np.argsort(-block, axis=1, kind="stable")
    return out


# ----------------------------------------------------------------------------- faiss
def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        raise SearchError("--index faiss needs FAISS: pip install 'simx-embed[faiss]'") from None
    return faiss


def faiss_index(cache_dir: Path, embeddings: np.ndarray, key: str) -> Any:
    """Load the FAISS index saved next to the cache for this commit, or build it.

    The index is an exact inner-product ``IndexFlatIP``: FAISS's blocked BLAS and
    heap top-k beat numpy on large caches without changing the answers. Its file is named
    by ``key`` (the cache's commit id and spec hash), so an index of any other commit,
    same row count or not, is never used; indexes of older commits are removed. Writers
    race safely (a private temp name, then an atomic rename); a cache folder that cannot
    be written gets an in-memory index and a warning.
    """
    import tempfile
    import warnings

    faiss = _faiss()
    path = cache_dir / f"faiss-{key}.index"
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal == embeddings.shape[0] and index.d == embeddings.shape[1]:
                return index
        except RuntimeError:
            pass  # unreadable: rebuild
    index = faiss.IndexFlatIP(int(embeddings.shape[1]))
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".faiss-", suffix=".tmp", dir=cache_dir)
        os.close(fd)
        try:
            faiss.write_index(index, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for old in cache_dir.glob("faiss-*.index"):
            if old != path:
                old.unlink(missing_ok=True)
        for old in (cache_dir / FAISS_FILE, cache_dir / FAISS_META):  # simx <= 0.1 names
            old.unlink(missing_ok=True)
    except (OSError, RuntimeError) as e:
        warnings.warn(f"cannot save the FAISS index in {cache_dir} ({e}); using it in memory "
                      "for this search only", RuntimeWarning, stacklevel=2)
    return index


def faiss_topk(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(_as_matrix(queries, "queries"))
    if q.shape[1] != index.d:
        raise SearchError(f"query dimension {q.shape[1]} != index dimension {index.d}")
    scores, idx = index.search(q, min(k, index.ntotal))
    return idx.astype(np.int64), scores.astype(np.float32)


# ----------------------------------------------------------------------------- text
def pair_id(model_id: str, source: str, weights: str) -> str:
    """The identity an image tower and its text tower share: the image model's id, source
    and weights (``pretrained``, ``random`` with simx's seed, or ``sha256:`` of the user's
    checkpoint). The text file records it as ``pair``; a cache's is read from its model_id,
    source and weights, so a text tower of other weights (another checkpoint, random
    vs pretrained) is refused even when the id and the dimension agree."""
    import hashlib
    import json

    blob = json.dumps({"id": model_id, "source": source, "weights": weights}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_model_path(model: str | os.PathLike[str]) -> Path:
    """The text tower that belongs to an image model: ``<stem>-text.onnx`` beside it.

    ``model`` may be the image model (path or id) or the text model itself.
    """
    from .session import models_dir, resolve_model_path

    from .session import read_spec

    p = Path(model)
    if p.suffix == ".onnx" and p.stem.endswith(TEXT_SUFFIX) and p.is_file():
        return p
    try:
        image = resolve_model_path(model)
    except ModelFileError:  # no image model: the text tower may still be there
        if p.suffix == ".onnx":
            cands = [p.with_name(p.stem + TEXT_SUFFIX + ".onnx")]
        else:
            cands = [models_dir() / f"{p.name}{TEXT_SUFFIX}.onnx"]
    else:
        cands = [image.with_name(image.stem + TEXT_SUFFIX + ".onnx")]
        # An int8/fp16 image file (<id>-int8.onnx) pairs with the fp32 <id>-text.onnx.
        try:
            cands.append(image.with_name(read_spec(image).id + TEXT_SUFFIX + ".onnx"))
        except ModelFileError:
            pass
    for cand in cands:
        if cand.is_file():
            return cand
    raise ModelFileError(
        f"no text tower {cands[0]} for {model}; export it with "
        "`simx export openclip --model ... --pretrained ... --text`"
    )


class TextEncoder:
    """Tokenizes text and runs a simx text tower: L2-normalized vectors in the image space.

    The tokenizer is the one the model was exported with (CLIP BPE, or the Hugging Face
    tokenizer.json beside it), checked against the sha256 in its metadata, so a
    mismatched vocabulary is an error, not drift.
    """

    def __init__(self, model: str | os.PathLike[str], provider: str = "auto",
                 threads: int | None = None) -> None:
        from .hf_tokenizer import text_tokenizer
        from .session import open_model

        self.path = text_model_path(model)
        self._session = open_model(self.path, provider=provider, threads=threads, kind="text")
        extra = self._session.spec.extra
        if extra.get("kind") != "text":
            raise ModelFileError(f"{self.path}: not a simx text tower (spec.extra.kind != 'text')")
        self.context_length = int(extra.get("context_length", 77))
        self.tokenizer = text_tokenizer(self.path, extra)

    @property
    def spec(self) -> Any:
        return self._session.spec

    @property
    def image_model(self) -> str | None:
        """The id of the image tower this text tower pairs with."""
        return self._session.spec.extra.get("image_model")

    @property
    def pair(self) -> str | None:
        """The image tower identity this text tower was exported with (None: older files)."""
        return self._session.spec.extra.get("pair")

    def check_pair(self, model_id: str, source: str | None, weights: str | None,
                   what: str) -> None:
        """Refuse to put this text tower's vectors next to ``what``'s image embeddings
        unless both come from one model (same id, source and weights)."""
        if self.image_model and self.image_model != model_id:
            raise SearchError(f"{self.path.name} is the text tower of {self.image_model}, but "
                              f"{what} holds {model_id} embeddings")
        if self.pair and source is not None and weights is not None:
            want = pair_id(model_id, source, weights)
            if self.pair != want:
                raise SearchError(
                    f"{self.path.name} was exported with other weights than {what} "
                    f"({model_id}, weights {weights}; pair {want} != the text tower's "
                    f"{self.pair}): their embeddings do not share a space; export both together")

    @property
    def dim(self) -> int:
        return self._session.spec.dim

    def embed(self, texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N, D] float32 L2-normalized text embeddings."""
        if isinstance(texts, str):
            texts = [texts]
        ids = self.tokenizer(list(texts))
        out = np.empty((ids.shape[0], self.dim), np.float32)
        for s in range(0, ids.shape[0], batch_size):
            e = self._session.run(ids[s : s + batch_size])
            # The spec says normalize=True, but a foreign file might not: be sure.
            out[s : s + batch_size] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return out


# ----------------------------------------------------------------------------- cache
@dataclass
class Hit:
    rank: int
    row: int
    path: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "row": self.row, "path": self.path, "score": self.score}


def cache_model(cache: Any, override: str | None = None) -> str:
    """The model that filled a cache: ``override``, else the id cache.json names, found on disk."""
    from .session import resolve_model_path

    if override:
        return str(resolve_model_path(override))
    meta = getattr(cache, "meta", {}) or {}
    name = meta.get("model_path") or meta.get("model_id")
    if not name:
        raise ModelFileError(f"{cache.directory}: cache.json names no model; pass --model PATH")
    try:
        return str(resolve_model_path(name))
    except ModelFileError:
        raise ModelFileError(
            f"the model that filled {cache.directory} ({name}) is not a file and not in "
            "$SIMX_MODELS_DIR (default ./onnx_models); pass --model PATH"
        ) from None


def search_cache(
    cache_dir: str | os.PathLike[str],
    queries: Sequence[str] = (),
    texts: Sequence[str] = (),
    k: int = 10,
    index: str = "exact",
    model: str | None = None,
    provider: str = "auto",
) -> list[dict[str, Any]]:
    """Top-k of each image and text query against a cache: [{query, kind, hits: [...]}].

    Image queries already in the cache reuse their row; others are embedded with
    the cache's own model (or ``model``). Text queries need the model's text tower.
    """
    from .cache import FeatureCache

    cache_dir = Path(cache_dir)
    cache = FeatureCache(cache_dir)
    emb = cache.embeddings
    paths = [str(p) for p in cache.paths]
    if len(paths) == 0:
        raise SearchError(f"the cache {cache_dir} is empty: nothing to search")
    if not queries and not texts:
        raise SearchError("give at least one query image or --text")
    dim = int(emb.shape[1])

    vecs: list[np.ndarray] = []
    labels: list[tuple[str, str]] = []
    if queries:
        known: dict[int, int] = {}
        todo: list[int] = []
        for i, q in enumerate(queries):
            row = _cached_row(cache, q)
            if row is None:
                todo.append(i)
            else:
                known[i] = row
        q_emb = np.empty((len(queries), dim), np.float32)
        for i, row in known.items():
            q_emb[i] = emb[row]
        if todo:
            from .encoder import Encoder

            for q in (queries[i] for i in todo):
                if not Path(q).is_file():
                    raise SearchError(f"query image not found: {q}")
            # Embed the way the cache's rows were embedded (same resampling, same EXIF rule).
            opts = cache.meta.get("options", {}) or {}
            enc = Encoder(cache_model(cache, model), provider=provider,
                          fast=bool(opts.get("fast", False)),
                          exif_transpose=bool(opts.get("exif_transpose", False)))
            _same_model(enc.spec, cache)
            q_emb[todo] = enc.embed([queries[i] for i in todo])
        vecs.append(q_emb)
        labels += [(q, "image") for q in queries]
    if texts:
        source = str(cache.meta.get("source", ""))
        if source.startswith("timm:"):
            raise SearchError(
                f"the cache {cache_dir} holds {cache.model_id} embeddings; DINOv2 has no text "
                "tower, so text search needs a cache made by an OpenCLIP model")
        te = TextEncoder(cache_model(cache, model), provider=provider)
        te.check_pair(cache.model_id, cache.meta.get("source"), cache.meta.get("weights"),
                      f"the cache {cache_dir}")
        if te.dim != dim:
            raise SearchError(f"text tower gives {te.dim}-d vectors, the cache holds {dim}-d ones")
        vecs.append(te.embed(list(texts)))
        labels += [(t, "text") for t in texts]

    qv = np.concatenate(vecs)
    if index == "faiss":
        key = f"{cache.commit_id}-{cache.meta.get('spec_hash')}"
        idx, val = faiss_topk(faiss_index(cache_dir, emb, key), qv, k)
    elif index == "exact":
        idx, val = topk(qv, emb, k)
    else:
        raise SearchError(f"unknown index {index!r}; choose exact or faiss")
    out = []
    for (label, kind), rows, scores in zip(labels, idx, val):
        hits = [Hit(r + 1, int(row), paths[int(row)], float(s)).to_dict()
                for r, (row, s) in enumerate(zip(rows, scores)) if row >= 0]
        out.append({"query": label, "kind": kind, "hits": hits})
    return out


def _same_model(spec: Any, cache: Any) -> None:
    """Queries must come from the model that filled the cache: same dim is not enough
    (dinov2-base and ViT-L-14 are both 768-d), the spec hash must match, as embed demands."""
    want = cache.meta.get("spec_hash")
    got = spec.embedding_hash()
    if got != want:
        raise SearchError(
            f"model {spec.id} (spec hash {got}) did not make the cache {cache.directory}: it "
            f"holds {cache.model_id} embeddings (spec hash {want}); pass that model, or none")


def _cached_row(cache: Any, query: str) -> int | None:
    """The cache row of a query image, if the cache holds that very file, unchanged since."""
    try:
        row = int(cache.row(query))
        fresh = cache.rows[row].matches(os.stat(query))
    except (KeyError, OSError):
        return None
    return row if fresh else None
