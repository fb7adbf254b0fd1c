"""SQLAlchemy tables. Importing this package registers every table on ``Base.metadata``."""

from app.models.api_key import DEFAULT_TENANT, ApiKey
from app.models.batch import Batch, BatchFile, BatchRequest, BatchResult, BatchStatus, FilePurpose
from app.models.collection import (
    Chunk,
    Collection,
    CollectionVersion,
    Document,
    IngestBatch,
    IngestError,
)
from app.models.job import Job, JobKind, JobResult, JobStatus
from app.models.recovery import JobRecovery, RecoveryAction
from app.models.registered_model import RegisteredModel, RegisteredModelKind
from app.models.source import IngestShard, SourceObject
from app.models.training import TrainingPair, TrainingRun
from app.models.webhook import WebhookDelivery, WebhookEndpoint, WebhookEvent, WebhookEventStatus

__all__ = [
    "DEFAULT_TENANT",
    "ApiKey",
    "Batch",
    "BatchFile",
    "BatchRequest",
    "BatchResult",
    "BatchStatus",
    "Chunk",
    "Collection",
    "CollectionVersion",
    "Document",
    "FilePurpose",
    "IngestBatch",
    "IngestError",
    "IngestShard",
    "Job",
    "JobKind",
    "JobRecovery",
    "JobResult",
    "JobStatus",
    "RecoveryAction",
    "RegisteredModel",
    "RegisteredModelKind",
    "SourceObject",
    "TrainingPair",
    "TrainingRun",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookEventStatus",
]
