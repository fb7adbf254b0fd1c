"""Per-tenant usage as Prometheus counters, read from Postgres at scrape time with a bounded set of labels.

Any API replica reports every tenant's totals (the same sums as ``GET /usage`` over all time). Only the
EMBEDQ_TENANT_METRICS_MAX_TENANTS busiest tenants (by tokens, then jobs) get a label of their own; the rest
are summed under ``tenant="other"``, so a deployment with thousands of tenants adds a bounded number of
series. A tenant that drops out of the busiest moves its totals to ``other``, which Prometheus' ``rate``
reads as a reset of its own series.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from app.usage.repository import KindUsage

OTHER_TENANTS = "other"


def tracked_tenants(rows: Iterable[KindUsage], cap: int) -> set[str]:
    """Return the ``cap`` tenants with the most tokens (then jobs): the ones with labels of their own."""
    tokens: dict[str, int] = defaultdict(int)
    jobs: dict[str, int] = defaultdict(int)
    for row in rows:
        tokens[row.tenant] += row.tokens
        jobs[row.tenant] += row.jobs
    ranked = sorted(tokens, key=lambda t: (-tokens[t], -jobs[t], t))
    return set(ranked[:cap])


def tenant_families(rows: list[KindUsage], cap: int) -> Iterator[Metric]:
    """Yield the per-tenant counters of ``rows``, tenants beyond the ``cap`` busiest folded into ``other``."""
    tracked = tracked_tenants(rows, cap)
    jobs: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[str, dict[str, int]] = {name: defaultdict(int) for name in _TOTALS}
    for row in rows:
        label = row.tenant if row.tenant in tracked else OTHER_TENANTS
        jobs[(label, row.kind)] += row.jobs
        for name in _TOTALS:
            totals[name][label] += getattr(row, name)
    family = CounterMetricFamily("embedq_tenant_jobs", "Jobs created, by tenant and kind", labels=["tenant", "kind"])
    for (tenant, kind), count in sorted(jobs.items()):
        family.add_metric([tenant, kind], count)
    yield family
    for name, help_text in _TOTALS.items():
        family = CounterMetricFamily(f"embedq_tenant_{name}", help_text, labels=["tenant"])
        for tenant, value in sorted(totals[name].items()):
            family.add_metric([tenant], value)
        yield family


_TOTALS = {
    "inputs": "Inputs of embedding jobs and documents of ingest/reembed jobs done or failed, by tenant",
    "chunks": "Chunks written by ingest and reembed jobs, by tenant",
    "tokens": "Tokens encoded for jobs, by tenant",
    "training_steps": "Optimizer steps of fine-tuning jobs, by tenant",
}
