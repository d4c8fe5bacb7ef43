"""deploy/grafana/meshgate.json: every PromQL expression names only series and labels that
meshgate's code defines, and every meshgate metric has a panel.

The set of metrics is not written down here: it is read from prometheus_client's registry
after importing every module of the checkout that defines a metric.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client.metrics import MetricWrapperBase

from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "meshgate.json"
_DEFINES_METRIC = re.compile(r"prometheus_client\.(Counter|Gauge|Histogram|Summary|Info|Enum)\(")
# The series each metric type exposes, by suffix of the family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# Labels every scraped series has (Prometheus adds them), and a histogram bucket's bound.
_TARGET_LABELS = {"job", "instance", "le"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "inf", "nan"}  # fmt: skip
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _metric_modules() -> Iterator[str]:
    """Every module of meshgate, the edge and the services that defines a Prometheus metric."""
    for package in ("meshgate", "edge", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if _DEFINES_METRIC.search(path.read_text()):
                yield ".".join(path.relative_to(ROOT).with_suffix("").parts)


def defined_series() -> tuple[dict[str, set[str]], set[str]]:
    """(series name -> its label names, meshgate's own metric family names)."""
    series: dict[str, set[str]] = {}
    ours: set[str] = set()
    for name in _metric_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                (family,) = value.describe()
                ours.add(family.name)
                for suffix in _SUFFIXES[family.type]:
                    # A labelled metric without a child yet has no samples to read labels from.
                    series[family.name + suffix] = set(value._labelnames)
    # The registry's other collectors (process_*, python_*), read from their samples.
    for family in prometheus_client.REGISTRY.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series, ours


def _expressions() -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def references(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, label names in selectors, label names in grouping clauses) of `expr`."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals: matcher values
    selector_labels = {
        label for _, inside in _SELECTOR.findall(text) for label in _MATCHER.findall(inside)
    }
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors, [$__rate_interval] included
    grouping = {label.strip() for inside in _GROUPING.findall(text) for label in inside.split(",")}
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d[A-Za-z0-9_.]*", " ", text)  # numbers, durations (5m)
    metrics = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function call (rate, sum, histogram_quantile, ...)
        metrics.add(word)
    return metrics, selector_labels, grouping - {""}


def test_the_reference_parser_finds_metrics_and_labels() -> None:
    metrics, selected, grouped = references(
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{status!~"2..", model="x"}'
        "[$__rate_interval]))) / on (route) sum(b_total offset 5m)"
    )
    assert metrics == {"a_bucket", "b_total"}
    assert selected == {"status", "model"}
    assert grouped == {"le", "route"}


@pytest.mark.parametrize(("title", "expr"), _expressions())
def test_each_expression_names_only_series_and_labels_the_code_defines(
    title: str, expr: str
) -> None:
    series, _ = defined_series()
    metrics, selected, grouped = references(expr)
    assert metrics, f"{title}: no metric in {expr!r}"
    unknown = metrics - set(series)
    assert not unknown, f"{title}: {sorted(unknown)} are not metrics meshgate exports"
    labels = set().union(*(series[m] for m in metrics)) | _TARGET_LABELS
    assert selected <= labels, f"{title}: labels {sorted(selected - labels)} do not exist"
    assert grouped <= labels, f"{title}: labels {sorted(grouped - labels)} do not exist"


def test_every_meshgate_metric_has_a_panel() -> None:
    _, ours = defined_series()
    used = set().union(*(references(expr)[0] for _, expr in _expressions()))
    suffixes = {suffix for group in _SUFFIXES.values() for suffix in group}
    families = {family for family in ours if {family + s for s in suffixes} & used}
    assert ours - families == set(), f"metrics without a panel: {sorted(ours - families)}"


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_dashboard_path_is_where_deploy_readme_says() -> None:
    assert Path("grafana/meshgate.json").as_posix() in (ROOT / "deploy/README.md").read_text()
