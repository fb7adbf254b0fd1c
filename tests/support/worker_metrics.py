"""Reading a Prometheus text exposition (an API's /metrics, a worker's metrics port) in tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample as {(name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def total(metrics: dict, name: str, **labels: str) -> float:
    """Sum ``name`` over every series whose labels include ``labels``."""
    return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample ``url`` exposes."""
    return samples(httpx.get(url, timeout=10).text)
