"""Metrics on hand-built rankings whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from simx.retrieval.metrics import (
    ap_at_k_simbench,
    ap_inria,
    holidays_map,
    holidays_queries,
    ukbench_ns_score,
)
from simx.retrieval.search import rank_all


# ----------------------------------------------------------------------------- UKBench
def test_ns_score_perfect_and_partial():
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    perfect = [[q] + [i for i in range(8) if groups[i] == groups[q] and i != q] + [
        i for i in range(8) if groups[i] != groups[q]] for q in range(8)]
    assert ukbench_ns_score(perfect, groups) == 4.0
    # Query 0 finds itself, one mate, then two strangers: 2 hits; others perfect.
    partial = [list(r) for r in perfect]
    partial[0] = [0, 1, 4, 5, 2, 3, 6, 7]
    assert ukbench_ns_score(partial, groups) == pytest.approx((2 + 4 * 7) / 8)
    # The query itself counts: a ranking without it loses one hit.
    partial[1] = [0, 2, 3, 4, 1, 5, 6, 7]
    assert ukbench_ns_score(partial, groups) == pytest.approx((2 + 3 + 4 * 6) / 8)


def test_ns_score_uneven_groups_and_short_rankings():
    groups = [0, 0, 0, 1, 1, 2]
    rankings = [[0, 3, 1, 2], [1, 0], [2, 5, 4, 3], [3, 4, 0, 1], [4, 3], [5]]
    # hits: 3, 2, 1, 2, 2, 1
    assert ukbench_ns_score(rankings, groups) == pytest.approx(11 / 6)
    assert ukbench_ns_score([], []) == 0.0


def test_ns_score_ties_resolved_by_index_order():
    # Query 0 has equal scores for images 1..4 (duplicates); rank_all keeps index order.
    emb = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8], [0.6, 0.8], [0.6, 0.8], [0, 1]], np.float32)
    ranks = rank_all(emb, emb)
    np.testing.assert_array_equal(ranks[0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ranks[2][:4], [1, 2, 3, 4])  # ties: lowest index first
    groups = [0, 0, 1, 1, 1, 2]
    # query 0 top-4: 0,1,2,3 -> group 0: 0,1 -> 2 hits
    assert ukbench_ns_score(ranks[:1], groups) == 2.0


# ----------------------------------------------------------------------------- AP
def test_ap_inria_hand_values():
    assert ap_inria([0, 1, 2], 3) == pytest.approx(1.0)
    # Positives at ranks 1 and 3 out of 2: trapezoids (0/1 + 1/2)/2/2 + (1/3 + 2/4)/2/2
    assert ap_inria([1, 3], 2) == pytest.approx((0.0 + 0.5) / 4 + (1 / 3 + 0.5) / 4)
    # One of two positives never retrieved.
    assert ap_inria([0], 2) == pytest.approx((1.0 + 1.0) / 4)
    assert ap_inria([], 3) == 0.0
    with pytest.raises(ValueError):
        ap_inria([0], 0)


def test_ap_inria_matches_reference_script_formula():
    """Cross-check against a literal transcription of holidays_map.py's loop."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 8))
        ranks = sorted(rng.choice(40, size=n, replace=False).tolist())
        ap, step = 0.0, 1.0 / n
        for ntp, rank in enumerate(ranks):
            p0 = 1.0 if rank == 0 else ntp / float(rank)
            ap += (p0 + (ntp + 1) / float(rank + 1)) * step / 2.0
        assert ap_inria(ranks, n) == pytest.approx(ap)


def test_ap_at_k_simbench_hand_values():
    rel = [True, False, True, False, False]
    assert ap_at_k_simbench(rel, 2, None) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap_at_k_simbench(rel, 2, 2) == pytest.approx(1 / 2)  # second hit beyond k
    # More positives than k: divided by all positives, so at most k/n.
    assert ap_at_k_simbench([True] * 10, 20, 10) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- Holidays
def test_holidays_queries_first_of_each_group():
    assert holidays_queries([1000, 1000, 1001, 1002, 1002, 1002]) == [0, 2, 3]


def test_holidays_map_hand_built():
    # group A: 0 (query), 1, 2    group B: 3 (query), 4    group C: 5 (query only: skipped)
    groups = [10, 10, 10, 11, 11, 12]
    rankings = {
        0: [0, 1, 3, 2, 4, 5],  # query first; positives at ranks 0 and 2 once it is removed
        3: [1, 4, 3, 0, 2, 5],  # query ranked third: ignored; positive at rank 1
        5: [5, 0, 1, 2, 3, 4],
    }
    r = holidays_map(rankings, groups)
    ap_a = (1.0 + 1.0) / 4 + (1 / 2 + 2 / 3) / 4
    ap_b = (0.0 + 0.5) / 2
    assert r.n_queries == 2 and r.skipped == 1
    assert r.map == pytest.approx((ap_a + ap_b) / 2)
    assert r.map_at_10 == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)


def test_holidays_perfect_and_worst():
    groups = [0, 0, 0, 0, 1, 1]
    n = len(groups)
    perfect = {q: sorted(range(n), key=lambda i: (groups[i] != groups[q], i)) for q in (0, 4)}
    assert holidays_map(perfect, groups).map == pytest.approx(1.0)
    assert holidays_map(perfect, groups).map_at_10 == pytest.approx(1.0)
    worst = {q: sorted(range(n), key=lambda i: (groups[i] == groups[q], i)) for q in (0, 4)}
    r = holidays_map(worst, groups)
    assert 0.0 < r.map < 0.5 and r.map_at_10 < 0.5
