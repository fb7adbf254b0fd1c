"""Usage per tenant: what each tenant's jobs used (jobs, inputs, chunks, tokens, training steps), from Postgres."""
