"""The Prometheus text exposition format, as engines serve it on `/metrics`.

Parsed with prometheus_client's own parser. Only the lines of the metrics asked
for reach it: a vLLM page runs to hundreds of histogram lines, and the router
reads it every second on the event loop that serves requests.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families

# metric name -> [(labels, value)], one entry per series.
Series = Mapping[str, Sequence[tuple[Mapping[str, str], float]]]


def read(text: str, names: Iterable[str]) -> Series:
    """The series of `names` found in `text`; raises ValueError on a malformed page."""
    wanted = tuple(names)
    heads = tuple(f"# {kind} {name} " for kind in ("HELP", "TYPE") for name in wanted)
    kept = [
        line
        for line in text.splitlines()
        if (line.startswith(wanted) and _named(line, wanted)) or line.startswith(heads)
    ]
    found: dict[str, list[tuple[Mapping[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        for sample in family.samples:
            if sample.name in wanted:
                found[sample.name].append((sample.labels, float(sample.value)))
    return found


def _named(line: str, names: tuple[str, ...]) -> bool:
    """Whether a sample line is of one of `names` exactly (not merely a longer name)."""
    end = len(line)
    for stop in ("{", " "):
        at = line.find(stop)
        if 0 <= at < end:
            end = at
    return line[:end] in names


def combine(
    series: Sequence[tuple[Mapping[str, str], float]], group: str, *, mean: bool = False
) -> float | None:
    """One number from an engine's series: the largest within each `group` label value
    (ranks of one engine core report the same state), then summed (queues) or averaged
    (cache use) across groups (data-parallel engine cores). None when there is no series."""
    if not series:
        return None
    by_group: dict[str, float] = {}
    for labels, value in series:
        key = labels.get(group, "")
        by_group[key] = max(by_group.get(key, value), value)
    total = sum(by_group.values())
    return total / len(by_group) if mean else total
