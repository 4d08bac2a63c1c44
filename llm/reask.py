"""The re-ask loop every stage that asks a model for structured answers shares (instruct, judge).

All pending items are asked in one backend call; an answer that does not parse is asked again, with the
next attempt's request (its own seed), and only those items go into the next call: one call per round, at
most `max_attempts` rounds. A backend that answers a different number of results than requests is broken
for every row, so it raises instead of dropping rows. What a stage counts per round (seconds, tokens,
retries) and what it keeps per answer are its own: `on_round` and `accept`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from editgen.llm.base import LLMBackend, LLMRequest, LLMResult


@dataclass(frozen=True)
class Round:
    """One backend call: its attempt number (0 first), requests, results and wall seconds."""

    attempt: int
    requests: Sequence[LLMRequest]
    results: Sequence[LLMResult]
    seconds: float


def ask_until_parsed(backend: LLMBackend, pending: Sequence[int], request: Callable[[int, int], LLMRequest],
                     accept: Callable[[int, LLMRequest, LLMResult, int], bool], max_attempts: int,
                     on_round: Callable[[Round], None] | None = None) -> list[int]:
    """Ask for the `pending` items (`request(item, attempt)`), re-asking those whose answer
    `accept(item, request, result, attempt)` refuses (False: ask again), one call per round, at most
    `max_attempts` rounds; returns the items still unanswered after the last round (the caller's
    `unparseable`)."""
    left = list(pending)
    for attempt in range(max_attempts):
        if not left:
            break
        requests = [request(i, attempt) for i in left]
        t0 = time.perf_counter()
        results = backend.generate(requests)
        done = Round(attempt, requests, results, time.perf_counter() - t0)
        if len(results) != len(requests):
            raise RuntimeError(f"{backend.name}: {len(results)} answers for {len(requests)} requests")
        if on_round is not None:
            on_round(done)
        left = [i for i, req, res in zip(left, requests, results, strict=True) if not accept(i, req, res, attempt)]
    return left
