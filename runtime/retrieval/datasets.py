"""UKBench and INRIA Holidays, in the layouts they are downloaded in, and ``simx eval``.

Why the real layouts: users point ``--root`` at what they unpacked, and the group
of an image follows from its file name alone:
- UKBench: ``ukbench00000.jpg`` ... ``ukbench10199.jpg`` (the archive puts them in
  ``full/``); group = number // 4, four views per object.
- Holidays: ``100000.jpg`` ... (the archive puts them in ``jpg/``); group = number // 100,
  the query is the group's first image (``xxxx00.jpg``).

Evaluation embeds through the feature cache (the same engine as ``simx embed``), so
a second evaluation of the same model on the same folder embeds nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simx.core.errors import SimxError

DATASETS = ("ukbench", "holidays")
_PATTERNS = {
    "ukbench": re.compile(r"^ukbench(\d{5})\.jpe?g$", re.IGNORECASE),
    "holidays": re.compile(r"^(\d{6})\.jpe?g$", re.IGNORECASE),
}
_SUBDIRS = {"ukbench": ("", "full"), "holidays": ("", "jpg")}
_GROUP_SIZE = {"ukbench": 4, "holidays": 100}


class DatasetError(SimxError):
    """A dataset folder without the expected files."""


@dataclass(frozen=True)
class Dataset:
    """Image files of a retrieval set, in id order, with the group of each."""

    name: str
    root: Path
    paths: list[Path]
    ids: list[int]
    groups: list[int]

    @property
    def n_groups(self) -> int:
        return len(set(self.groups))


def load_dataset(name: str, root: str | os.PathLike[str]) -> Dataset:
    """Find a dataset's images under ``root`` (or its ``full/`` / ``jpg/`` sub-folder)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    pat = _PATTERNS[name]
    found: list[tuple[int, Path]] = []
    for sub in _SUBDIRS[name]:
        d = root / sub if sub else root
        if d.is_dir():
            found = sorted((int(m.group(1)), d / f) for f in os.listdir(d)
                           if (m := pat.match(f)) and (d / f).is_file())
            if found:
                break
    if not found:
        example = "ukbench00000.jpg" if name == "ukbench" else "100000.jpg"
        where = " or ".join(str(root / s) if s else str(root) for s in _SUBDIRS[name])
        raise DatasetError(f"no {name} images (named like {example}) in {where}")
    ids = [i for i, _ in found]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{name}: image number {dup} appears twice (.jpg and .jpeg?)")
    size = _GROUP_SIZE[name]
    return Dataset(name, root, [p for _, p in found], ids, [i // size for i in ids])


def default_cache_dir(dataset: Dataset, spec_hash: str) -> Path:
    """``$SIMX_CACHE_DIR`` (default ``~/.cache/simx``) / eval-<dataset>-<root hash>-<model hash>.

    Outside the dataset folder, which may be read-only; keyed by both the folder and the
    model so two copies of a dataset or two models never share rows.
    """
    base = Path(os.environ.get("SIMX_CACHE_DIR") or Path.home() / ".cache" / "simx")
    root = hashlib.sha256(str(dataset.root.resolve()).encode()).hexdigest()[:8]
    return base / f"eval-{dataset.name}-{root}-{spec_hash}"


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
    from simx.cache.store import CacheError, FeatureCache, canonical_path
    from simx.run.encoder import Encoder
    from simx.embed.pipeline import embed_into_cache
    from simx.retrieval.metrics import (
        holidays_per_query,
        holidays_queries,
        holidays_summary,
        ukbench_hits,
        ukbench_ns_score,
    )
    from simx.retrieval.search import rank_all, topk

    ds = load_dataset(dataset, root)
    enc = Encoder(model, provider=provider, threads=threads)
    cdir = Path(cache_dir) if cache_dir else default_cache_dir(ds, enc.spec.embedding_hash())
    if (cdir / "cache.json").is_file():
        # The indexer drops rows of files it did not walk: refuse a cache that holds
        # anything besides this dataset rather than silently shrink it.
        try:
            existing = FeatureCache(cdir)
        except CacheError:
            existing = None
        if existing is not None:
            mine = {canonical_path(p) for p in ds.paths}
            foreign = sum(1 for p in existing.paths if p not in mine)
            if foreign:
                raise SimxError(
                    f"cache {cdir} holds {foreign} images outside this {ds.name} set, which "
                    "evaluation would drop; give eval its own --cache folder"
                )
    t0 = time.perf_counter()
    report = embed_into_cache([str(p) for p in ds.paths], enc, cdir, batch_size=batch_size,
                              progress=progress)
    embed_s = time.perf_counter() - t0
    cache = FeatureCache(cdir)
    rows = []
    for p in ds.paths:
        try:
            rows.append(cache.row(p))
        except KeyError as e:
            raise SimxError(f"cannot evaluate: {e.args[0]}") from None
    emb = np.asarray(cache.embeddings[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    t1 = time.perf_counter()
    per_query: list[dict[str, Any]] | None = None
    if ds.name == "ukbench":
        idx, val = topk(emb, emb, 4)
        metrics: dict[str, Any] = {"ns_score": ukbench_ns_score(idx, ds.groups, k=4)}
        n_queries = len(ds.paths)
        if detail:
            per_query = per_query_detail(ds, list(range(len(ds.paths))), idx, val,
                                         [float(x) for x in ukbench_hits(idx, ds.groups, 4)])
    else:
        queries = holidays_queries(ds.groups)
        ranks = rank_all(emb[queries], emb)
        per_all = holidays_per_query(dict(zip(queries, ranks)), ds.groups, queries)
        r = holidays_summary(per_all)
        metrics = {"map": r.map, "map_at_10": r.map_at_10, "skipped_queries": r.skipped}
        n_queries = r.n_queries
        if detail:
            per = [p for p in per_all if p is not None]
            top = np.stack([p.ranking[:10] for p in per]) if per else np.zeros((0, 0), np.int64)
            val = np.einsum("qd,qkd->qk", emb[[p.query for p in per]], emb[top]) if per else top
            per_query = per_query_detail(ds, [p.query for p in per], top, val,
                                         [p.ap for p in per])
            for d, p in zip(per_query, per):
                d["ap_at_10"], d["positives"] = p.ap_at_k, p.n_positives
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
