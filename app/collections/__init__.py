"""Collections: bulk corpus ingestion into Postgres/pgvector, token-aware chunking, vector versions, search."""
