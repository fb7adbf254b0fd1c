"""API keys and tenants: hashed keys, the caller's principal, and the per-key limits."""
