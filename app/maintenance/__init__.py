"""Maintenance: the reaper that finds active jobs whose tasks were lost and re-enqueues or fails them."""
