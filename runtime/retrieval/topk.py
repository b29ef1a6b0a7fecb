"""Exact cosine top-k with numpy: the default search.

Why exact by default: a cache of 100k DINOv2-S rows is 150 MB and a query costs one
matrix-vector product, far below the cost of embedding the query. FAISS
(``simx-embed[faiss]``, ``simx.retrieval.ann``) is there for caches where that stops being true.

Scores are inner products of L2-normalized rows, i.e. cosines. Ties are broken by
row index (lowest first), so results are reproducible across runs and machines.
"""

from __future__ import annotations

import numpy as np

from simx.core.errors import SearchError

_CHUNK = 1024  # query rows per score block: bounds memory to _CHUNK * N floats


def as_matrix(x: np.ndarray, name: str) -> np.ndarray:
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
    q = as_matrix(queries, "queries")
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
    q = as_matrix(queries, "queries")
    out = np.empty((q.shape[0], db.shape[0]), np.int64)
    for s in range(0, q.shape[0], _CHUNK):
        block = q[s : s + _CHUNK] @ np.asarray(db, dtype=np.float32).T
        block[~np.isfinite(block)] = -np.inf
        out[s : s + _CHUNK] = np.argsort(-block, axis=1, kind="stable")
    return out


# ----------------------------------------------------------------------------- faiss






# ----------------------------------------------------------------------------- text






# ----------------------------------------------------------------------------- cache
