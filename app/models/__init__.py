"""SQLAlchemy tables. Importing this package registers every table on ``Base.metadata``."""

from app.models.job import Job, JobKind, JobResult, JobStatus

__all__ = ["Job", "JobKind", "JobResult", "JobStatus"]
