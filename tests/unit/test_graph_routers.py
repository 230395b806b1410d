"""Seldon graph routers (graph/routers.py): Seldon's RANDOM_ABTEST and SIMPLE_ROUTER, and the epsilon-greedy and
Thompson-sampling bandits that learn from rewards. Counts are checked against binomial bounds of 4 standard
deviations (a fixed seed makes each run the same)."""

from __future__ import annotations

import math

import pytest

from inferd.graph.routers import EpsilonGreedy, RandomABTest, SimpleRouter, ThompsonSampling, make_router


def within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_random_abtest_splits_by_ratio_a() -> None:
    router = make_router("RANDOM_ABTEST", {"ratioA": 0.3, "seed": 1}, 2)
    choices = [router.route() for _ in range(5000)]
    assert set(choices) == {0, 1}
    assert within_4_sigma(choices.count(0), 5000, 0.3)


def test_simple_router_always_takes_the_first_child() -> None:
    router = make_router("SIMPLE_ROUTER", {}, 3)
    assert isinstance(router, SimpleRouter)
    assert {router.route() for _ in range(100)} == {0}


def test_epsilon_greedy_follows_the_rewarded_branch() -> None:
    router = EpsilonGreedy(3, epsilon=0.1, seed=7)
    assert router.best_branch == 0
    for _ in range(20):
        router.feedback(0, 0.0)
        router.feedback(2, 1.0)
        router.feedback(1, 0.5)
    assert router.best_branch == 2
    choices = [router.route() for _ in range(2000)]
    # the best branch with probability 1 - epsilon, each other one with epsilon / 2
    assert within_4_sigma(choices.count(2), 2000, 0.9)
    assert within_4_sigma(choices.count(0), 2000, 0.05)


def test_epsilon_greedy_rewards_count_per_row() -> None:
    router = EpsilonGreedy(2, epsilon=0.0, seed=1)
    router.feedback(1, 1.0, rows=1)
    router.feedback(0, 0.9, rows=10)  # 9 successes of 10: mean 0.9 < 1.0
    assert router.best_branch == 1
    router.feedback(1, 0.0, rows=1)  # now 1 of 2: mean 0.5
    assert router.best_branch == 0
    assert router.successes == [9.0, 1.0]


def test_thompson_sampling_learns_the_better_branch() -> None:
    router = ThompsonSampling(2, seed=3)
    for _ in range(50):
        router.feedback(0, 0.1)
        router.feedback(1, 0.9)
    choices = [router.route() for _ in range(1000)]
    assert choices.count(1) > 950


def test_feedback_for_an_unknown_branch_is_ignored() -> None:
    router = EpsilonGreedy(2, seed=1)
    router.feedback(5, 1.0)
    router.feedback(-1, 1.0)
    assert router.successes == [0.0, 0.0]
    assert router.best_branch == 0


def test_a_router_made_with_a_seed_repeats_its_choices() -> None:
    first = RandomABTest(0.5, seed=11)
    second = RandomABTest(0.5, seed=11)
    assert [first.route() for _ in range(50)] == [second.route() for _ in range(50)]


@pytest.mark.parametrize(("implementation", "parameters", "children", "words"), [
    ("RANDOM_ABTEST", {"ratioA": 0.5}, 3, "two children"),
    ("RANDOM_ABTEST", {"ratioA": 1.5}, 2, "between 0.0 and 1.0"),
    ("RANDOM_ABTEST", {"ratioA": "half"}, 2, "must be a number"),
    ("EPSILON_GREEDY", {"n_branches": 3}, 2, "n_branches is 3"),
    ("EPSILON_GREEDY", {"best_branch": 4}, 2, "best_branch"),
    ("EPSILON_GREEDY", {"seed": True}, 2, "must be an integer"),
    ("THOMPSON_SAMPLING", {}, 0, "at least one branch"),
    ("GREEDY", {}, 2, "unknown router"),
])
def test_bad_router_declarations_say_what_is_wrong(implementation: str, parameters: dict[str, object],
                                                   children: int, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        make_router(implementation, parameters, children)
