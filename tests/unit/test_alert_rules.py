"""The Prometheus alerting rules of FDD §10.2 are valid, refer to real metrics, and fire when they should.

``promtool check rules`` parses the file; ``promtool test rules`` runs
``deploy/prometheus/cortx-alerts.test.yaml``, where each alert is fed unhealthy sample series
(it must fire, with its labels and annotations) and healthy ones (it must not).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from actors.metrics import exported_series
from tests.promtool import require_promtool

RULES_DIR = Path(__file__).parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "cortx-alerts.yaml"
RULE_TESTS = RULES_DIR / "cortx-alerts.test.yaml"
pytestmark = pytest.mark.timeout(60)

#: The FDD §10.2 alerts, plus FDD §9.1's state persistence target.
EXPECTED_ALERTS = {
    "CortxExecutionFailureRateHigh",  # execution failures > 5 %
    "CortxExecutionTimedOut",  # execution time > timeout (ended by the engine)
    "CortxExecutionOverdue",  # execution time > timeout (still running)
    "CortxQueueDepthHigh",  # queue depth > threshold
    "CortxDatabaseUnreachable",  # database connection issues
    "CortxCheckpointWritesSlow",  # FDD §9.1 state persistence < 100 ms
}


def _rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    promtool = require_promtool()
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_each_alert_fires_on_unhealthy_series_and_not_on_healthy_ones() -> None:
    promtool = require_promtool()
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_of_the_fdd_is_defined_and_tested_both_ways() -> None:
    assert {rule["alert"] for rule in _rules()} == EXPECTED_ALERTS
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert fired == EXPECTED_ALERTS, EXPECTED_ALERTS - fired
    assert silent == EXPECTED_ALERTS, EXPECTED_ALERTS - silent


def test_rules_refer_only_to_metrics_the_engine_exports() -> None:
    known = exported_series()
    for rule in _rules():
        names = set(re.findall(r"\bray_[a-zA-Z0-9_]+", str(rule["expr"])))
        assert names, rule["alert"]
        assert names <= known, (rule["alert"], names - known)


def test_every_alert_names_its_runbook_entry_and_severity() -> None:
    runbook = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for rule in _rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert f'"{rule["alert"]}"' in annotations["description"]
        assert f"### {rule['alert']}" in runbook, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}  # type: ignore[index]
