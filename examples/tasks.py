"""Functions for ``task`` steps of the examples (``examples/batch-scoring.yaml``) and benchmarks.

A ``task`` step names them as ``examples.tasks:<function>``; the deployment must allow the
module: ``CORTX_TASK_MODULES=examples.tasks``. Ray workers import it, so run the driver (or
``cortx-workflow``) from the repository root: Ray puts the driver's working folder on the
workers' ``sys.path``. Each function takes keyword arguments (the step's rendered
``inputs``) and returns a JSON value.
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["add_one", "score_item", "summarize_scores"]


def add_one(n: int) -> int:
    """``n + 1``: the trivial task step (benchmarks measure the engine's cost with it)."""
    return n + 1


def score_item(item: dict[str, Any], samples: int = 200_000) -> dict[str, Any]:
    """Score one loan application by Monte Carlo simulation: CPU work worth spreading out.

    The chance that a monthly payment is missed grows with the loan-to-income ratio and
    shrinks with the years of credit history; ``samples`` simulated months (seeded by the
    item's id, so the score is the same on every run and every worker) estimate the share
    of months paid.

    Args:
        item: ``{"id": str, "amount": number, "income": number (monthly, > 0),
            "history_years": number (>= 0)}``.
        samples: simulated months, 1 to 10,000,000 (about 1 s of CPU per 1,000,000).

    Returns:
        ``{"id": str, "score": float}``, the score in [0, 1] rounded to 4 digits (1 is best).

    Raises:
        ValueError: ``samples`` out of range or a non-positive ``income`` (the step fails
            with kind ``task_error``, the exception's type and message recorded).
    """
    if not 1 <= samples <= 10_000_000:
        raise ValueError(f"samples must be from 1 to 10000000, got {samples}")
    if item["income"] <= 0:
        raise ValueError(f"item {item['id']!r}: income must be above 0, got {item['income']}")
    ratio = item["amount"] / item["income"]
    p_miss = min(0.95, 0.01 + 0.2 * ratio / (1 + item["history_years"]))
    rng = random.Random(str(item["id"]))
    missed = sum(1 for _ in range(samples) if rng.random() < p_miss)
    return {"id": item["id"], "score": round(1 - missed / samples, 4)}


def summarize_scores(results: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Split scored items into approved and rejected.

    Args:
        results: a loop's outputs, one ``{body step id: {"id", "score"}}`` mapping per
            iteration (``steps.<loop>.outputs``).
        threshold: the lowest approved score, 0 to 1.

    Returns:
        ``{"approved": [ids], "rejected": [ids], "mean_score": float | None}``, ids in input order.
    """
    scored = [next(iter(entry.values())) for entry in results]
    approved = [s["id"] for s in scored if s["score"] >= threshold]
    rejected = [s["id"] for s in scored if s["score"] < threshold]
    mean = round(sum(s["score"] for s in scored) / len(scored), 4) if scored else None
    return {"approved": approved, "rejected": rejected, "mean_score": mean}
