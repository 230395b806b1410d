"""Seldon's built-in routers, and the bandits that learn from feedback, as a Seldon graph's ROUTER nodes run them.

A router picks one child of its node for each request (`route`) and may learn from the reward of a feedback
message that reaches it later (`feedback`, with the branch it chose then). Declared in a SeldonDeployment as a
node's `implementation` with Seldon's `parameters` list:

- `RANDOM_ABTEST` (Seldon's own): child 0 with probability `ratioA` (FLOAT, default 0.5), else child 1.
- `SIMPLE_ROUTER` (Seldon's own): always child 0.
- `EPSILON_GREEDY`: the branch with the best mean reward so far, except with probability `epsilon` (FLOAT,
  default 0.1) one of the others at random. Parameters `n_branches` (INT, default: the node's children),
  `best_branch` (INT, the start; default 0), `seed` (INT; fixed for reproducible choices).
- `THOMPSON_SAMPLING`: a Beta(1 + successes, 1 + failures) draw per branch, the highest wins. `n_branches`, `seed`.

The bandits follow seldon-core's components (routers/epsilon-greedy, routers/thompson-sampling): a feedback's
`reward` in [0, 1] over a request of `rows` rows counts `reward * rows` successes and `(1 - reward) * rows`
failures for the branch that served it (Seldon rounds the successes down to whole rows; here they stay fractional,
so a reward of 0.5 on one row still counts). Each router has its own lock: choices and updates may come from
several threads (synchronous callers of the graph).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["BUILTIN_ROUTERS", "EpsilonGreedy", "RandomABTest", "Router", "SimpleRouter", "ThompsonSampling",
           "make_router"]


class Router(Protocol):
    """Chooses a child branch of a ROUTER node; learns from the reward of the requests it routed."""

    def route(self) -> int: ...

    def feedback(self, branch: int, reward: float, rows: int = 1) -> None: ...


def _float(parameters: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = parameters.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter '{key}' must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"parameter '{key}' must be between {low} and {high}, got {number}")
    return number


def _int(parameters: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = parameters.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"parameter '{key}' must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter '{key}' must be an integer, got {value!r}") from None


class SimpleRouter:
    """Seldon's SIMPLE_ROUTER: every request to child 0."""

    def route(self) -> int:
        return 0

    def feedback(self, branch: int, reward: float, rows: int = 1) -> None:
        pass


class RandomABTest:
    """Seldon's RANDOM_ABTEST: child 0 with probability `ratioA`, else child 1."""

    def __init__(self, ratio_a: float, seed: int | None = None) -> None:
        self.ratio_a = ratio_a
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def route(self) -> int:
        with self._lock:
            return 0 if self._random.random() < self.ratio_a else 1

    def feedback(self, branch: int, reward: float, rows: int = 1) -> None:
        pass


class _Bandit:
    """Successes and failures per branch, from feedback."""

    def __init__(self, branches: int, seed: int | None) -> None:
        if branches < 1:
            raise ValueError(f"a bandit router needs at least one branch, got n_branches={branches}")
        self.branches = branches
        self.successes = [0.0] * branches
        self.failures = [0.0] * branches
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def feedback(self, branch: int, reward: float, rows: int = 1) -> None:
        if not 0 <= branch < self.branches:
            return  # feedback for a request this router did not route (or routed before a change of branches)
        reward = min(max(float(reward), 0.0), 1.0)
        rows = max(int(rows), 1)
        with self._lock:
            self.successes[branch] += reward * rows
            self.failures[branch] += (1.0 - reward) * rows
            self._learned(branch)

    def _learned(self, branch: int) -> None:
        pass


class EpsilonGreedy(_Bandit):
    """The best branch by mean reward, or with probability `epsilon` one of the others at random."""

    def __init__(self, branches: int, epsilon: float = 0.1, best_branch: int = 0, seed: int | None = None) -> None:
        super().__init__(branches, seed)
        if not 0 <= best_branch < branches:
            raise ValueError(f"best_branch must be a branch from 0 to {branches - 1}, got {best_branch}")
        self.epsilon = epsilon
        self.best_branch = best_branch

    def route(self) -> int:
        with self._lock:
            if self.branches == 1 or self._random.random() >= self.epsilon:
                return self.best_branch
            others = [b for b in range(self.branches) if b != self.best_branch]
            return self._random.choice(others)

    def _learned(self, branch: int) -> None:
        def mean(b: int) -> float:
            tries = self.successes[b] + self.failures[b]
            return self.successes[b] / tries if tries else 0.0

        self.best_branch = max(range(self.branches), key=mean)


class ThompsonSampling(_Bandit):
    """A draw from each branch's Beta(1 + successes, 1 + failures); the highest draw wins."""

    def route(self) -> int:
        with self._lock:
            draws = [self._random.betavariate(1.0 + s, 1.0 + f) for s, f in zip(self.successes, self.failures,
                                                                                 strict=True)]
        return max(range(self.branches), key=draws.__getitem__)


def make_router(implementation: str, parameters: Mapping[str, Any], children: int) -> Router:
    """The router a node's `implementation` names, with its (already typed) parameters; ValueError when the
    parameters do not fit."""
    seed = _int(parameters, "seed", None)
    if implementation == "SIMPLE_ROUTER":
        return SimpleRouter()
    if implementation == "RANDOM_ABTEST":
        if children != 2:
            raise ValueError(f"RANDOM_ABTEST routes between two children, this node has {children}")
        return RandomABTest(_float(parameters, "ratioA", 0.5, 0.0, 1.0), seed)
    branches = _int(parameters, "n_branches", children)
    assert branches is not None
    if branches != children:
        raise ValueError(f"n_branches is {branches} but the node has {children} children")
    if implementation == "EPSILON_GREEDY":
        best = _int(parameters, "best_branch", 0)
        return EpsilonGreedy(branches, _float(parameters, "epsilon", 0.1, 0.0, 1.0), best or 0, seed)
    if implementation == "THOMPSON_SAMPLING":
        return ThompsonSampling(branches, seed)
    raise ValueError(f"unknown router implementation '{implementation}'")


BUILTIN_ROUTERS = ("RANDOM_ABTEST", "SIMPLE_ROUTER", "EPSILON_GREEDY", "THOMPSON_SAMPLING")
