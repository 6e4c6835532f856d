"""Summarise ``py-spy record --format raw`` profiles of an ExecutionHost: where its CPU time goes.

Usage::

    .venv/bin/python benchmarks/profile_summary.py benchmarks/results/profiles/w1-host*.txt [--top 25]
        [--steps N]

Each input line is a collapsed stack (``frame;frame;... count``), as ``benchmarks/suite.py
--profile-dir`` records them (py-spy samples threads that are running, not idle ones). It
prints the share of samples in each category of the hot path (a sample counts in the first
category, in the order below, that matches any of its frames: a checkpoint's SQL compile
counts as "SQL compile", not as "checkpoint transaction"), then the functions with the most
inclusive samples. With ``--steps`` (the steps done while recording) and the sampling rate
it also gives CPU ms per step.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

#: (category, pattern matched against "function (file)" of any frame), first match wins.
CATEGORIES: list[tuple[str, str]] = [
    ("SQL compile / statement build (SQLAlchemy)", r"sqlalchemy/sql/(compiler|elements|dml|selectable|base|cache_key|coercions|annotation|visitors)"),
    ("SQLAlchemy execute / result (ORM-core layer)", r"sqlalchemy/(engine|ext/asyncio|pool|dialects|util)"),
    ("asyncpg / aiosqlite driver", r"asyncpg|aiosqlite"),
    ("logging (JSON log lines)", r"logging/__init__|actors/logs\.py"),
    ("metrics (Ray metrics)", r"actors/metrics\.py|ray/util/metrics"),
    ("JSON / event checks", r"json/(encoder|decoder|__init__)|check_events|_clean|redact"),
    ("Ray task submit / await", r"ray/(remote_function|_private/worker|actor|_raylet|util/client)|_raylet|remote_function|get_objects|ObjectRef|as_future|_on_completed"),
    ("pydantic / pack model", r"pydantic|model_validate"),
    ("expressions / templates", r"dsl/(expressions|templates)"),
    ("scheduler bookkeeping", r"actors/scheduler\.py|actors/task_step\.py|actors/call_plan\.py"),
    ("asyncio event loop", r"asyncio/"),
]


def parse(paths: list[Path]) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            stacks.append((stack.split(";"), int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--steps", type=int, help="steps done while recording (gives CPU ms per step)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy sampling rate (samples/s)")
    args = parser.parse_args()
    stacks = parse(args.files)
    total = sum(c for _, c in stacks) or 1
    by_category: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    compiled = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
    for frames, count in stacks:
        for name, pattern in compiled:
            if any(pattern.search(f) for f in frames):
                by_category[name] += count
                break
        else:
            by_category["other"] += count
        for f in set(frames):
            inclusive[re.sub(r":\d+\)?$", "", f)] += count
    per_step = (lambda n: f"{n / args.rate * 1000 / args.steps:7.3f} ms/step") if args.steps else (lambda n: "")
    print(f"{total} samples ({total / args.rate:.1f} s of CPU at {args.rate}/s)")
    print("\nwhere the host's CPU goes (first matching category):")
    for name, count in by_category.most_common():
        print(f"  {100 * count / total:5.1f}%  {per_step(count)}  {name}")
    print(f"\ntop {args.top} functions by inclusive samples:")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()
