"""What the routes call: submissions (with Idempotency-Key) and the reads the CLI needs. No HTTP
here: these raise domain exceptions, which raylauncher/api/errors.py maps to answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer

from raylauncher import control
from raylauncher.admission import queue_position
from raylauncher.api.models import InputsView, JobDetail, KeptClusterView, LogChunk, SubmitJobRequest
from raylauncher.api.views import job_view, s3_uri
from raylauncher.authz import Caller, authorize_trigger
from raylauncher.config import Pipeline, PipelinesConfig
from raylauncher.errors import InvalidQuery, PipelineNotFound, RayLauncherError, UnknownPipeline
from raylauncher.intake import IntakeService
from raylauncher.model import Job, logs_key_of
from raylauncher.objects import ObjectStore
from raylauncher.store import JobStore

#: How long an Idempotency-Key is remembered (the idempotency table's TTL does the rest).
IDEMPOTENCY_EXPIRES_S = 24 * 3600
#: At most this much of a log per GET /jobs/{job_id}/logs (a Lambda answer is at most 6 MB).
MAX_LOG_CHUNK_BYTES = 1 << 20
#: Keys of a job's inputs shown by GET /jobs/{job_id}.
FIRST_INPUTS = 5


@dataclass
class Submissions:
    """POST /jobs. With an Idempotency-Key: at most one job per key (Powertools idempotency on
    the idempotency table, key `api-jobs#<md5 of the key>`); the body is checked against the one
    stored with the key. Give it a persistence layer of its own: Powertools configures a layer
    once, for the first function that uses it."""

    intake: IntakeService
    store: JobStore
    persistence_store: BasePersistenceLayer
    config: IdempotencyConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="request",
            expires_after_seconds=IDEMPOTENCY_EXPIRES_S,
            response_hook=lambda response, _record: {**response, "replayed": True},
        )
        self._submit_once = idempotent_function(
            self._submit,
            data_keyword_argument="submission",
            persistence_store=self.persistence_store,
            config=self.config,
            key_prefix="api-jobs",
        )

    def submit(self, request: SubmitJobRequest, idempotency_key: str | None, lambda_context: Any) -> tuple[Job, bool]:
        """The job for this request and whether it was made by an earlier request with the same
        key (then it is read again: its status now). Raises UnknownPipeline, InvalidParams,
        IdempotencyValidationError (key reused with another body), IdempotencyAlreadyInProgressError."""
        if idempotency_key is None:
            return self.intake.submit(request.pipeline, request.params, trigger="api"), False
        if lambda_context is not None:  # lets a request that died mid-way release its key
            self.config.register_lambda_context(lambda_context)
        submission = {"key": idempotency_key, "request": request.model_dump(mode="json")}
        result = self._submit_once(submission=submission)
        if result.get("replayed"):
            return self.store.get(result["job_id"]), True
        return Job.model_validate(result), False

    def _submit(self, submission: dict[str, Any]) -> dict[str, Any]:
        request = submission["request"]
        return self.intake.submit(request["pipeline"], request["params"], trigger="api").model_dump(mode="json")


@dataclass
class ApiServices:
    """What the routes need; built once per Lambda instance (lambdas/api/handler.py)."""

    pipelines: PipelinesConfig
    store: JobStore
    bucket: str
    submissions: Submissions
    on_finished: Callable[[Job], object] = lambda job: None  # gives back a cancelled job's cluster slot
    objects: ObjectStore | None = None  # the data bucket: manifests and logs (None: not readable)
    deployed_release: str | None = None  # the deployment's release (raylauncher/releases.py)

    def check_submission(self, request: SubmitJobRequest, caller: Caller) -> None:
        """What POST /jobs checks before anything is written (no Idempotency-Key is used by a
        refused request): the pipeline exists, the caller may trigger it, the params fit.
        Raises UnknownPipeline, NotAllowed, InvalidParams."""
        pipeline = self.pipelines.get(request.pipeline)
        authorize_trigger(pipeline, caller)
        pipeline.validate_params(request.params)

    def cancel(self, job_id: str, caller: Caller) -> Job:
        """POST /jobs/{job_id}/cancel by a caller allowed to trigger the job's pipeline (a job of
        a pipeline no longer configured has no list to check: IAM alone decides, as by default).
        Raises JobNotFound, NotAllowed, TransitionConflict, StorageError."""
        job = self.store.get(job_id)
        pipeline = next((p for p in self.pipelines.pipelines if p.name == job.pipeline), None)
        if pipeline is not None:
            authorize_trigger(pipeline, caller, job_id)
        return control.request_cancel(self.store, job_id, on_finished=self.on_finished)

    def release(self, job_id: str, caller: Caller) -> Job:
        """POST /jobs/{job_id}/release: end the hold of the cluster a failed job left up, at once
        (its holder, or the watchdog, tears it down). Authorized like a cancel. Raises
        JobNotFound, NotAllowed, TransitionConflict (no cluster is held for this job)."""
        job = self.store.get(job_id)
        pipeline = next((p for p in self.pipelines.pipelines if p.name == job.pipeline), None)
        if pipeline is not None:
            authorize_trigger(pipeline, caller, job_id)
        self.store.clusters.request_release(job)  # type: ignore[attr-defined]
        return self.store.get(job_id)

    def job_detail(self, job_id: str) -> JobDetail:
        """GET /jobs/{job_id}. Raises JobNotFound, StorageError (the job table)."""
        job = self.store.get(job_id)
        view = job_view(job, self.bucket, queue_position(job, self.store), self.pipelines)
        return JobDetail(**dict(view), inputs=self.inputs_of(job), kept_cluster=self.kept_cluster_of(job))

    def kept_cluster_of(self, job: Job) -> KeptClusterView | None:
        """The job's warm/held cluster record (best-effort, like the inputs)."""
        clusters = getattr(self.store, "clusters", None)
        if not job.cluster_key or clusters is None:
            return None
        try:
            record = clusters.get(job.cluster_key)
        except RayLauncherError:
            return None
        return KeptClusterView(**{k: v for k, v in record.model_dump(mode="json").items() if k in KeptClusterView.model_fields})

    def inputs_of(self, job: Job) -> InputsView | None:
        """The manifest's object count and first keys; None when it cannot be read (best-effort:
        the job's own record stays readable whatever happened to its manifest)."""
        if self.objects is None or not job.manifest_key:
            return None
        try:
            objects = self.objects.get_json(job.manifest_key)["objects"]
            keys = [str(o["key"]) for o in objects[:FIRST_INPUTS]]
            return InputsView(count=len(objects), first=keys)
        except (RayLauncherError, ValueError, KeyError, TypeError):
            return None

    def job_log(self, job_id: str, offset: int) -> LogChunk:
        """The current attempt's Ray log from byte `offset` on (at most MAX_LOG_CHUNK_BYTES, cut
        at a character boundary). Raises JobNotFound, InvalidQuery (`offset` past the log's
        end), StorageError."""
        job = self.store.get(job_id)  # first: a terminal job's log is final before it ends
        key = logs_key_of(job)
        location = s3_uri(self.bucket, key) or ""
        piece = self.objects.read_range(key, offset, MAX_LOG_CHUNK_BYTES) if self.objects else None
        if piece is None:  # nothing kept yet (the driver writes it every few seconds while it runs)
            return LogChunk(content="", next_offset=offset, complete=job.is_terminal, log_location=location)
        if offset > piece.size:
            raise InvalidQuery(
                "offset", f"offset: {offset} is past the end of the log ({piece.size} bytes); pass a next_offset "
                "this API returned, or 0",
            )  # fmt: skip
        data = piece.data
        if offset + len(data) < piece.size:  # more follows: never split a character between chunks
            data = whole_characters(data)
        next_offset = offset + len(data)
        return LogChunk(
            content=data.decode("utf-8", errors="replace"),
            next_offset=next_offset,
            complete=job.is_terminal and next_offset >= piece.size,
            log_location=location,
        )

    def pipeline(self, name: str) -> Pipeline:
        """Raises PipelineNotFound."""
        try:
            return self.pipelines.get(name)
        except UnknownPipeline:
            raise PipelineNotFound(name) from None


def whole_characters(data: bytes) -> bytes:
    """`data` without a UTF-8 sequence cut off at its end (the next chunk starts with it)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for its lead
            continue
        needed = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return data[: len(data) - back] if needed > back else data
    return data
