"""Signed webhooks: endpoints, events owed by finished jobs, delivery with retries, the SSRF guard."""
