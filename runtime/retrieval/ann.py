"""The optional FAISS index beside a cache (``simx-embed[faiss]``): built once, reused while
the cache is unchanged, and searched for caches where exact numpy top-k stops being cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from simx.core.errors import SearchError
from simx.retrieval.topk import as_matrix


FAISS_FILE = "faiss.index"
FAISS_META = "faiss.json"




# ----------------------------------------------------------------------------- exact








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
    q = np.ascontiguousarray(as_matrix(queries, "queries"))
    if q.shape[1] != index.d:
        raise SearchError(f"query dimension {q.shape[1]} != index dimension {index.d}")
    scores, idx = index.search(q, min(k, index.ntotal))
    return idx.astype(np.int64), scores.astype(np.float32)


# ----------------------------------------------------------------------------- text






# ----------------------------------------------------------------------------- cache








