"""The OpenAI Batch API: /v1/files and /v1/batches; a batch runs as a job of kind ``batch`` on the bulk queue."""
