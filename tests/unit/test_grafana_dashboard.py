"""The Grafana dashboard charts only metrics the engine exports, under their exported names.

Each panel's PromQL is read from ``deploy/grafana/cortx-workflow-dashboard.json``; every
metric name in it must be one that :mod:`actors.metrics` defines (as Ray's exporter names
it: ``ray_`` first, ``_total`` after a counter, ``_bucket``/``_sum``/``_count`` of a
histogram), and ``promtool`` must parse it once Grafana's variables are filled in.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.metrics import METRICS, exported_series
from tests.promtool import require_promtool

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "cortx-workflow-dashboard.json"
pytestmark = pytest.mark.timeout(60)

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
             "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals, e.g. label values
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval, $workflow_pack_id)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()", text)  # not a function call
    return {name for name in names if name.lower() not in _KEYWORDS}


def _panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.append(panel)
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def _expressions() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query, panels' targets and templating queries alike."""
    exprs = [(p["title"], t["expr"]) for p in _panels() for t in p.get("targets", [])]
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert match, query
            exprs.append((f"variable {variable['name']}", match.group(1)))
    return exprs


def test_metric_names_are_found_in_promql() -> None:
    expr = (
        'sum by (status) (rate(ray_a_total{status=~"x|y",p=~"$p"}[$__rate_interval])) / ignoring(status) '
        "group_left histogram_quantile(0.95, sum by (le) (rate(ray_b_bucket[5m] offset 1h))) > bool 1e3"
    )
    assert metric_names(expr) == {"ray_a_total", "ray_b_bucket"}


def test_every_panel_queries_only_metrics_the_engine_defines() -> None:
    known = exported_series()
    panels = [p for p in _panels() if p["type"] != "row"]
    assert len(panels) >= 10
    for title, expr in _expressions():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: {sorted(names - known)} are not defined in actors/metrics.py"


def test_every_metric_is_charted() -> None:
    charted = {name for _, expr in _expressions() for name in metric_names(expr)}
    for spec in METRICS:
        assert set(spec.series) & charted, f"{spec.exported} is on no panel"


def test_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    seen: set[tuple[int, int]] = set()
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        grid = panel["gridPos"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & seen, panel["title"]
        seen |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_promtool_parses_every_panel_query(tmp_path: Path) -> None:
    promtool = require_promtool()
    rules = [
        {"record": f"cortx:dashboard_query_{index}", "expr": expr.replace("$__rate_interval", "5m").replace("$workflow_pack_id", ".*")}
        for index, (_, expr) in enumerate(_expressions())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
