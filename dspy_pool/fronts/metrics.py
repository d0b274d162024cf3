"""The group's one Prometheus endpoint: every front's metrics, each sample labelled with its `front`.

Each front serves its own metrics on a loopback port only the supervisor
knows; a scrape of the operator's --metrics-port reads them all (a front that
does not answer in time is left out of that scrape) and adds the supervisor's
own: live fronts and front restarts.
"""

from __future__ import annotations

import urllib.request
from typing import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["FrontsCollector", "label_front"]

_SCRAPE_TIMEOUT_S = 2.0


def label_front(families: dict[str, Metric], text: str, index: int) -> None:
    """Add one front's exposition text to `families`, each sample labelled front=index."""
    for family in text_string_to_metric_families(text):
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
        for sample in family.samples:
            merged.samples.append(Sample(sample.name, {"front": str(index), **sample.labels}, sample.value,
                                         sample.timestamp, sample.exemplar))


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=_SCRAPE_TIMEOUT_S) as reply:
            return reply.read().decode()
    except OSError:
        return None  # restarting or stuck: left out of this scrape


class FrontsCollector:
    """A prometheus_client collector over the live fronts; `fronts()` gives {index: metrics port}."""

    def __init__(self, fronts: Callable[[], dict[int, int]], restarts: Callable[[], int]) -> None:
        self._fronts = fronts
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        fronts = self._fronts()
        families: dict[str, Metric] = {}
        answered = 0
        for index, port in sorted(fronts.items()):
            text = _scrape(port)
            if text is not None:
                label_front(families, text, index)
                answered += 1
        yield from families.values()
        yield GaugeMetricFamily("dspy_pool_fronts", "front processes serving (answering this scrape)", value=answered)
        yield CounterMetricFamily("dspy_pool_front_restarts", "front processes restarted after they died", value=self._restarts())
