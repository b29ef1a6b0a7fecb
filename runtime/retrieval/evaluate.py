"""``simx eval``: embed (or reuse) a retrieval dataset's features and score them with the
dataset's own protocol (UKBench N-S score, INRIA Holidays mAP)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from simx.cache import CacheError, FeatureCache, canonical_path
from simx.core.errors import SimxError
from simx.embed.pipeline import embed_into_cache
from simx.retrieval.datasets import Dataset, default_cache_dir, load_dataset
from simx.retrieval.metrics import (
    holidays_per_query,
    holidays_queries,
    holidays_summary,
    ukbench_hits,
    ukbench_ns_score,
)
from simx.retrieval.topk import rank_all, topk
from simx.run.encoder import Encoder


def evaluate(
    dataset: str,
    root: str | os.PathLike[str],
    model: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    provider: str = "auto",
    threads: int | None = None,
    progress: bool | None = None,
    detail: bool = False,
) -> dict[str, Any]:
    """Embed (or reuse) a dataset's features and score them with the dataset's protocol.

    Returns a JSON-ready dict: dataset, model, counts, the metrics, and how many
    images were embedded now versus reused from the cache. ``detail=True`` adds
    ``per_query`` (see :func:`per_query_detail`), which ``simx eval --html`` shows.
    """
    ds = load_dataset(dataset, root)
    enc = Encoder(model, provider=provider, threads=threads)
    cdir = Path(cache_dir) if cache_dir else default_cache_dir(ds, enc.spec.embedding_hash())
    _refuse_foreign_cache(cdir, ds)
    t0 = time.perf_counter()
    report = embed_into_cache([str(p) for p in ds.paths], enc, cdir, batch_size=batch_size,
                              progress=progress)
    embed_s = time.perf_counter() - t0
    emb = _embeddings_of(cdir, ds)
    t1 = time.perf_counter()
    score = _score_ukbench if ds.name == "ukbench" else _score_holidays
    metrics, n_queries, per_query = score(ds, emb, detail)
    out: dict[str, Any] = {
        "dataset": ds.name,
        "root": str(ds.root),
        "model": enc.spec.id,
        "model_path": str(enc.path),
        "weights": enc.spec.weights,
        "providers": enc.providers,
        "images": len(ds.paths),
        "groups": ds.n_groups,
        "queries": n_queries,
        "metrics": metrics,
        "embedded": report.embedded,
        "reused": report.unchanged,
        "cache": str(cdir),
        "embed_seconds": round(embed_s, 3),
        "score_seconds": round(time.perf_counter() - t1, 3),
    }
    if per_query is not None:
        out["per_query"] = per_query
    return out


def _refuse_foreign_cache(cdir: Path, ds: Dataset) -> None:
    """The embed pipeline drops rows of files it did not walk: refuse a cache that holds
    anything besides this dataset rather than silently shrink it."""
    if not (cdir / "cache.json").is_file():
        return
    try:
        existing = FeatureCache(cdir)
    except CacheError:
        return
    mine = {canonical_path(p) for p in ds.paths}
    foreign = sum(1 for p in existing.paths if p not in mine)
    if foreign:
        raise SimxError(
            f"cache {cdir} holds {foreign} images outside this {ds.name} set, which "
            "evaluation would drop; give eval its own --cache folder"
        )


def _embeddings_of(cdir: Path, ds: Dataset) -> np.ndarray:
    """The dataset's rows, in the dataset's order, as one float32 array."""
    cache = FeatureCache(cdir)
    rows = []
    for p in ds.paths:
        try:
            rows.append(cache.row(p))
        except KeyError as e:
            raise SimxError(f"cannot evaluate: {e.args[0]}") from None
    return np.asarray(cache.embeddings[np.asarray(rows, dtype=np.int64)], dtype=np.float32)


Scored = tuple[dict[str, Any], int, "list[dict[str, Any]] | None"]


def _score_ukbench(ds: Dataset, emb: np.ndarray, detail: bool) -> Scored:
    idx, val = topk(emb, emb, 4)
    metrics: dict[str, Any] = {"ns_score": ukbench_ns_score(idx, ds.groups, k=4)}
    per_query = None
    if detail:
        per_query = per_query_detail(ds, list(range(len(ds.paths))), idx, val,
                                     [float(x) for x in ukbench_hits(idx, ds.groups, 4)])
    return metrics, len(ds.paths), per_query


def _score_holidays(ds: Dataset, emb: np.ndarray, detail: bool) -> Scored:
    queries = holidays_queries(ds.groups)
    ranks = rank_all(emb[queries], emb)
    per_all = holidays_per_query(dict(zip(queries, ranks)), ds.groups, queries)
    r = holidays_summary(per_all)
    metrics = {"map": r.map, "map_at_10": r.map_at_10, "skipped_queries": r.skipped}
    per_query = None
    if detail:
        per = [p for p in per_all if p is not None]
        top = np.stack([p.ranking[:10] for p in per]) if per else np.zeros((0, 0), np.int64)
        val = np.einsum("qd,qkd->qk", emb[[p.query for p in per]], emb[top]) if per else top
        per_query = per_query_detail(ds, [p.query for p in per], top, val, [p.ap for p in per])
        for d, p in zip(per_query, per):
            d["ap_at_10"], d["positives"] = p.ap_at_k, p.n_positives
    return metrics, r.n_queries, per_query


def per_query_detail(ds: Dataset, queries: list[int], top: np.ndarray, scores: np.ndarray,
                     query_scores: list[float]) -> list[dict[str, Any]]:
    """One JSON-ready dict per query: its path, group, score under the protocol, and its
    ranked results (path, cosine, correct = same group), for reports that show failures."""
    groups = ds.groups
    out = []
    for q, rows, vals, score in zip(queries, top, scores, query_scores):
        out.append({
            "query": str(ds.paths[q]),
            "group": int(groups[q]),
            "score": float(score),
            "hits": [{"rank": r + 1, "path": str(ds.paths[int(i)]), "score": float(v),
                      "correct": bool(groups[int(i)] == groups[q])}
                     for r, (i, v) in enumerate(zip(rows, vals))],
        })
    return out
