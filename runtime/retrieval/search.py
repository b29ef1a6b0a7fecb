"""Search a feature cache: by image, by path already in the cache, or by text (``simx search``).

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

from simx.core.errors import ModelFileError, SearchError  # noqa: F401  (SearchError: re-exported)
from simx.retrieval.ann import faiss_index, faiss_topk
from simx.retrieval.topk import rank_all, topk  # noqa: F401  (re-exported)
from simx.run.text import TextEncoder



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
    from simx.run.session import resolve_model_path

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
    from simx.cache import FeatureCache

    cache_dir = Path(cache_dir)
    cache = FeatureCache(cache_dir)
    emb = cache.embeddings
    paths = [str(p) for p in cache.paths]
    if len(paths) == 0:
        raise SearchError(f"the cache {cache_dir} is empty: nothing to search")
    if not queries and not texts:
        raise SearchError("give at least one query image or --text")

    vecs: list[np.ndarray] = []
    labels: list[tuple[str, str]] = []
    if queries:
        vecs.append(_image_queries(cache, queries, model, provider))
        labels += [(q, "image") for q in queries]
    if texts:
        vecs.append(_text_queries(cache, texts, model, provider))
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


def _image_queries(cache: Any, queries: Sequence[str], model: str | None,
                   provider: str) -> np.ndarray:
    """[Q, D] query vectors: a query already in the cache reuses its row; the others are
    embedded the way the cache's rows were (same model, resampling and EXIF rule)."""
    emb = cache.embeddings
    q_emb = np.empty((len(queries), int(emb.shape[1])), np.float32)
    todo: list[int] = []
    for i, q in enumerate(queries):
        row = _cached_row(cache, q)
        if row is None:
            todo.append(i)
        else:
            q_emb[i] = emb[row]
    if todo:
        from simx.run.encoder import Encoder

        for q in (queries[i] for i in todo):
            if not Path(q).is_file():
                raise SearchError(f"query image not found: {q}")
        opts = cache.meta.get("options", {}) or {}
        enc = Encoder(cache_model(cache, model), provider=provider,
                      fast=bool(opts.get("fast", False)),
                      exif_transpose=bool(opts.get("exif_transpose", False)))
        _same_model(enc.spec, cache)
        q_emb[todo] = enc.embed([queries[i] for i in todo])
    return q_emb


def _text_queries(cache: Any, texts: Sequence[str], model: str | None, provider: str) -> np.ndarray:
    """[T, D] text vectors from the text tower paired with the cache's model."""
    source = str(cache.meta.get("source", ""))
    if source.startswith("timm:"):
        raise SearchError(
            f"the cache {cache.directory} holds {cache.model_id} embeddings; DINOv2 has no text "
            "tower, so text search needs a cache made by an OpenCLIP model")
    te = TextEncoder(cache_model(cache, model), provider=provider)
    te.check_pair(cache.model_id, cache.meta.get("source"), cache.meta.get("weights"),
                  f"the cache {cache.directory}")
    dim = int(cache.embeddings.shape[1])
    if te.dim != dim:
        raise SearchError(f"text tower gives {te.dim}-d vectors, the cache holds {dim}-d ones")
    return te.embed(list(texts))


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
