"""fastq.benchmarking.time_round_robin: every candidate runs once per round (plus warm-up), and no
candidate has a fixed predecessor (a fixed one biased bench_intx_linear.py: see the docstring)."""

from collections import defaultdict

import pytest

from fastq.benchmarking import time_round_robin


def test_round_robin_counts_and_varied_predecessors():
    names = [f"c{i}" for i in range(5)]
    calls = []
    samples = time_round_robin({n: (lambda n=n: calls.append(n)) for n in names}, rounds=30, warmup=2)
    assert {n: len(s) for n, s in samples.items()} == {n: 30 for n in names}
    timed = calls[2 * len(names):]
    assert len(timed) == 30 * len(names)
    rounds = [timed[i:i + len(names)] for i in range(0, len(timed), len(names))]
    assert all(sorted(r) == names for r in rounds)  # each round runs every candidate once
    before = defaultdict(set)
    for prev, cur in zip(timed, timed[1:]):
        before[cur].add(prev)
    # 30 shuffled rounds give every candidate several predecessors (a rotation gives one or two)
    assert all(len(before[n]) >= 3 for n in names), dict(before)


def test_round_robin_rejects_bad_counts():
    with pytest.raises(ValueError):
        time_round_robin({"a": lambda: None}, rounds=0)
