"""Retrieval metrics for UKBench and INRIA Holidays, on rankings of integer labels.

Why these exact definitions: published numbers for both datasets come from fixed
protocols, and sim-bench (which simx replaces) reports mAP@10 with its own
definition. Each function documents which protocol it follows, so figures from
simx can be put next to either.

A *ranking* is one query's result list of database indices, best first. Ties in
score must be broken before calling these (``simx.search`` breaks them by index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def ukbench_ns_score(rankings: Sequence[Sequence[int]] | np.ndarray, groups: Sequence[int],
                     k: int = 4) -> float:
    """UKBench N-S score: mean number of the query's group among its top ``k``, itself included.

    Nistér & Stewénius' protocol: every image is a query against the whole set,
    the query is *not* removed, so a perfect system scores 4.0 (groups of 4).
    ``rankings[q]`` is query q's ranking over all images (q included);
    ``groups[i]`` is image i's group.
    """
    hits = ukbench_hits(rankings, groups, k)
    return float(np.mean(hits)) if hits else 0.0


def ukbench_hits(rankings: Sequence[Sequence[int]] | np.ndarray, groups: Sequence[int],
                 k: int = 4) -> list[int]:
    """Per query, how many of its top ``k`` share its group (the N-S score's terms), so a
    report can show which queries fail."""
    groups = np.asarray(groups)
    return [int(np.sum(groups[np.asarray(r[:k], dtype=np.int64)] == groups[q]))
            for q, r in enumerate(rankings)]


def ap_inria(tp_ranks: Sequence[int], n_positives: int) -> float:
    """Average precision as INRIA's ``holidays_map.py`` computes it.

    ``tp_ranks`` are the 0-based ranks of the true positives, increasing, counted
    with the query removed from the list. Each positive adds a trapezoid of the
    precision-recall curve: width 1/n_positives, left height ntp/rank (1.0 at rank
    0), right height (ntp+1)/(rank+1). Positives never retrieved add nothing.
    """
    if n_positives <= 0:
        raise ValueError("average precision needs at least one positive")
    ap = 0.0
    step = 1.0 / n_positives
    for ntp, rank in enumerate(tp_ranks):
        p0 = 1.0 if rank == 0 else ntp / float(rank)
        p1 = (ntp + 1) / float(rank + 1)
        ap += (p0 + p1) * step / 2.0
    return ap


def ap_at_k_simbench(ranked_relevance: Sequence[bool], n_positives: int, k: int | None) -> float:
    """sim-bench's (mean) average precision at k, for one query.

    ``ranked_relevance`` is the relevance of the ranking with the query removed.
    AP@k = sum over hits within the first k of precision@rank, divided by the total
    number of positives (not by min(k, positives)), so a query with more than k
    positives can't reach 1.0. k=None means the full ranking (non-interpolated AP).
    Matches ``sim_bench/metrics/average_precision.py``, which drops rank 0 as the
    query; here the query is removed by index, which agrees whenever it ranks first.
    """
    if n_positives <= 0:
        raise ValueError("average precision needs at least one positive")
    rel = np.asarray(ranked_relevance, dtype=bool)
    if k is not None:
        rel = rel[:k]
    ranks = np.flatnonzero(rel) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / n_positives)


@dataclass(frozen=True)
class HolidaysResult:
    """mAP (INRIA protocol), mAP@10 (sim-bench), and the query count."""

    map: float
    map_at_10: float
    n_queries: int
    skipped: int  # groups with no image besides the query (no AP defined)


def holidays_queries(groups: Sequence[int]) -> list[int]:
    """The first image of each group (Holidays: the ``xxxx00.jpg`` image) in index order."""
    seen: set[int] = set()
    out = []
    for i, g in enumerate(groups):
        if int(g) not in seen:
            seen.add(int(g))
            out.append(i)
    return out


def holidays_map(rankings: dict[int, Sequence[int]] | Sequence[Sequence[int]],
                 groups: Sequence[int], queries: Sequence[int] | None = None,
                 k: int = 10) -> HolidaysResult:
    """INRIA Holidays evaluation: mAP over full rankings (query excluded) and sim-bench mAP@k.

    ``rankings`` maps each query index to its ranking over the database (the query
    may appear in it; it is ignored, as ``holidays_map.py`` does). ``queries``
    defaults to the first image of each group. Positives are the other images of
    the query's group; a group with no other image is skipped and counted.
    """
    if queries is None:
        queries = holidays_queries(groups)
    return holidays_summary(holidays_per_query(rankings, groups, queries, k))


def holidays_summary(per: Sequence[QueryAP | None]) -> HolidaysResult:
    """The mAP figures of :func:`holidays_per_query`'s terms (None entries count as skipped),
    so a caller that also reports per query computes the APs once."""
    aps = [p.ap for p in per if p is not None]
    aps_k = [p.ap_at_k for p in per if p is not None]
    skipped = sum(1 for p in per if p is None)
    if not aps:
        return HolidaysResult(map=0.0, map_at_10=0.0, n_queries=0, skipped=skipped)
    return HolidaysResult(map=float(np.mean(aps)), map_at_10=float(np.mean(aps_k)),
                          n_queries=len(aps), skipped=skipped)


@dataclass(frozen=True)
class QueryAP:
    """One Holidays query: its AP (INRIA), AP@k (sim-bench), positives, ranking without it."""

    query: int
    ap: float
    ap_at_k: float
    n_positives: int
    ranking: np.ndarray  # the database indices best first, the query removed


def holidays_per_query(rankings: dict[int, Sequence[int]] | Sequence[Sequence[int]],
                       groups: Sequence[int], queries: Sequence[int],
                       k: int = 10) -> list[QueryAP | None]:
    """Each query's AP terms of :func:`holidays_map` (None where its group has no other image),
    so a report can list the queries that fail."""
    groups = np.asarray(groups)
    out: list[QueryAP | None] = []
    for q in queries:
        ranking = np.asarray(rankings[q], dtype=np.int64)
        ranking = ranking[ranking != q]
        n_pos = int(np.sum(groups == groups[q])) - 1
        if n_pos == 0:
            out.append(None)
            continue
        rel = groups[ranking] == groups[q]
        out.append(QueryAP(int(q), ap_inria(np.flatnonzero(rel).tolist(), n_pos),
                           ap_at_k_simbench(rel, n_pos, k), n_pos, ranking))
    return out
