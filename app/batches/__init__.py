"""The OpenAI Batch API: /v1/files and /v1/batches; a batch runs as a job of kind ``batch`` on the bulk queue."""

# A batch job that ends without its batch (a cancel through /jobs, the reaper failing it) ends the batch too:
# ``ending`` registers that hook with app.jobs.lifecycle when any part of the package is first imported, in
# the API and in every worker alike (the reaper imports only app.batches.execution).
from app.batches import ending as _ending  # noqa: F401
