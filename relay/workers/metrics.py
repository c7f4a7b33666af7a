"""One /metrics for a node of several processes: every process's exposition, each series
labelled with the process it came from (``worker="0"`` is the front), families merged by name
so the text stays valid (one HELP/TYPE per family). Sum over ``worker`` for node totals."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

LABEL = "worker"


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge_expositions(texts: Mapping[int, str]) -> bytes:
    """``texts``: process index -> its Prometheus text exposition. A process whose text does
    not parse is left out (and counted in ``stagecast_worker_scrape_errors``)."""
    families: dict[str, Metric] = {}
    errors = 0
    for worker, text in sorted(texts.items()):
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            errors += 1
            continue
        for fam in parsed:
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for s in fam.samples:
                labels = {LABEL: str(worker), **s.labels}  # a series' own wins
                merged.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
    scrape = Metric("stagecast_worker_scrape_errors", "Worker expositions left out", "gauge")
    scrape.add_sample("stagecast_worker_scrape_errors", {}, float(errors))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*families.values(), scrape]))
    return generate_latest(registry)
