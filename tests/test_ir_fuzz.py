"""Mutation fuzzing of the IR front end (tests/ir_fuzz.py): a small seeded run under a fixed time budget in the
default suite, the long run behind `slow` (and as benchmarks/fuzz_ir.py, whose numbers are in the README)."""
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hyp_seed

from tests.ir_fuzz import Stats, corpus, front_end, mutate, mutations

BUDGET_S = 40.0  # the default run stops drawing work after this, whatever max_examples says


def _run(n: int, seed: int, budget_s: float) -> Stats:
    stats = Stats()
    start = time.perf_counter()

    @hyp_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=["generate"],
              suppress_health_check=list(HealthCheck))
    @given(mutations(corpus()))
    def one(case):
        if time.perf_counter() - start > budget_s:
            return
        text = mutate(case)
        stats.add(text, front_end(text))

    one()
    return stats


def _report(stats: Stats) -> str:
    crash, stage, text = stats.crashes[0]
    return f"{len(stats.crashes)} crash(es)/hang(s); first at {stage}: {crash}\n--- mutant ---\n{text[:4000]}"


def test_corpus_is_accepted_as_is():
    for text in corpus():
        out = front_end(text)
        assert out.stage == "ok" and not out.error and not out.crash, (out, text[:300])


def test_seeded_mutants_give_input_errors_only():
    stats = _run(n=150, seed=20261129, budget_s=BUDGET_S)
    assert stats.mutants >= 20, "the budget left too few mutants to mean anything"
    assert not stats.crashes, _report(stats)
    assert stats.max_seconds < 5.0
    # the mutants reach past the parser, or the run would only test the lexer
    assert sum(n for k, n in stats.stages.items() if "parse" not in k) >= stats.mutants // 10, stats.stages


@pytest.mark.slow
def test_long_fuzz_run():
    stats = _run(n=10000, seed=1, budget_s=3 * 3600)
    assert stats.mutants == 10000
    assert not stats.crashes, _report(stats)
