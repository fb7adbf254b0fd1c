"""Operators' view: Prometheus metrics, and logs that carry job and task ids."""
