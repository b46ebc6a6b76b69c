"""Intake: S3 object-created events in, one job per pipeline per batch out.

Decoding follows S3's event encoding: object keys arrive URL-encoded with '+' for a space
(`%2B` is a real plus), so `unquote_plus` gives back the key as it is in the bucket.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from raylauncher.admission import Launcher
from raylauncher.config import Pipeline, PipelinesConfig
from raylauncher.errors import NoInputObjects, PoisonMessage, RayLauncherError
from raylauncher.claims import ObjectClaims
from raylauncher.model import Job, S3ObjectRef, job_prefix, new_job_id, utc_now
from raylauncher.objects import ObjectStore
from raylauncher.store import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeMessage:
    """One queue message, parsed: its id (for partial-failure reporting) and its objects."""

    message_id: str
    objects: tuple[S3ObjectRef, ...]


@dataclass
class IntakeResult:
    jobs: list[Job] = field(default_factory=list)
    failed_message_ids: list[str] = field(default_factory=list)
    ignored: list[S3ObjectRef] = field(default_factory=list)


def decode_key(raw: str) -> str:
    """An S3 event's object key as stored in the bucket ('+' is a space, '%2B' a plus)."""
    return unquote_plus(raw)


def parse_s3_event(body: str) -> tuple[S3ObjectRef, ...]:
    """The created objects in one S3 event notification (an SQS message body).

    S3's `s3:TestEvent` (sent when a notification is configured) carries no objects.
    Raises PoisonMessage for a body that is not an S3 event at all.
    """
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        raise PoisonMessage("message body is not JSON") from None
    if not isinstance(doc, dict):
        raise PoisonMessage("message body is not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return ()
    records = doc.get("Records")
    if not isinstance(records, list):
        raise PoisonMessage("message body has no 'Records' list: not an S3 event notification")
    refs = []
    for i, rec in enumerate(records):
        try:
            if not str(rec["eventName"]).startswith("ObjectCreated:"):
                continue
            s3 = rec["s3"]
            obj = s3["object"]
            refs.append(
                S3ObjectRef(
                    bucket=str(s3["bucket"]["name"]),
                    key=decode_key(str(obj["key"])),
                    size=int(obj.get("size", 0)),
                    etag=obj.get("eTag"),
                    version_id=obj.get("versionId"),
                    sequencer=obj.get("sequencer"),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PoisonMessage(f"Records[{i}] is not an S3 object record ({type(err).__name__}: {err})") from None
    return tuple(refs)


def manifest_document(job: Job, bucket: str, objects: Iterable[S3ObjectRef]) -> dict:
    """What the Ray job reads: the exact objects it must process, and the run's params."""
    return {
        "job_id": job.job_id,
        "pipeline": job.pipeline,
        "bucket": bucket,
        "params": job.params,
        "objects": [
            {k: v for k, v in asdict(o).items() if k != "bucket"} for o in objects
        ],
    }


class IntakeService:
    """Turns objects into jobs and has the bastion run them."""

    def __init__(
        self,
        pipelines: PipelinesConfig,
        store: JobStore,
        objects: ObjectStore,
        launcher: Launcher,
        claims: ObjectClaims | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._pipelines = pipelines
        self._store = store
        self._objects = objects
        self._launcher = launcher
        self._claims = claims
        self._clock = clock

    def start_jobs(self, messages: Iterable[IntakeMessage]) -> IntakeResult:
        """One job per pipeline for this batch. A message whose job could not be recorded is
        reported failed (so the queue redelivers it); nothing is acknowledged without a job."""
        result = IntakeResult()
        groups: dict[str, tuple[Pipeline, dict[str, S3ObjectRef], set[str]]] = {}
        for message in messages:
            for ref in message.objects:
                pipeline = self._pipelines.match(ref.key) if ref.bucket == self._objects.bucket else None
                if pipeline is None:
                    log.warning("ignoring s3://%s/%s: no pipeline is triggered by it", ref.bucket, ref.key)
                    result.ignored.append(ref)
                    continue
                _, refs, ids = groups.setdefault(pipeline.name, (pipeline, {}, set()))
                # One entry per key: a key written twice in one batch is read once (its latest).
                seen = refs.get(ref.key)
                if seen is None or (ref.sequencer or "") > (seen.sequencer or ""):
                    refs[ref.key] = ref
                ids.add(message.message_id)
        for pipeline, refs, ids in groups.values():
            objects = list(refs.values())
            try:
                # Burst coalescing: one job per batch and pipeline, at most max_objects_per_job each.
                for first in range(0, len(objects), pipeline.max_objects_per_job):
                    job = self._start_s3_job(pipeline, objects[first : first + pipeline.max_objects_per_job])
                    if job is not None:
                        result.jobs.append(job)
            except RayLauncherError:
                log.exception("could not start a job for pipeline %s; its messages will be retried", pipeline.name)
                result.failed_message_ids.extend(sorted(ids - set(result.failed_message_ids)))
        return result

    def _start_s3_job(self, pipeline: Pipeline, objects: list[S3ObjectRef]) -> Job | None:
        """Claim the objects, then start a job for those not already another job's (None if
        every one was a duplicate delivery). If the job cannot be recorded, the claims are
        released and the error propagates (the messages are retried)."""
        job_id = new_job_id(pipeline.name, self._clock())
        claimed = self._claims.claim(objects, job_id) if self._claims else objects
        if not claimed:
            log.info("all %d object(s) were already taken by other jobs (duplicate delivery)", len(objects))
            return None
        try:
            return self.start_job(pipeline, claimed, "s3", job_id=job_id)
        except RayLauncherError:
            if self._claims:
                self._claims.release(claimed, job_id)
            raise

    def submit(self, pipeline_name: str, raw_params: dict[str, Any], trigger: Literal["api", "schedule"]) -> Job:
        """Start a run of `pipeline_name` with `raw_params` (an API call or a schedule).
        Objects under the `s3_prefix` params that match the trigger (at most max_objects_per_job,
        each once) become the manifest. Raises UnknownPipeline, InvalidParams, or NoInputObjects
        (a pipeline that reads input, and nothing to read) — naming the field — before anything
        is written."""
        pipeline = self._pipelines.get(pipeline_name)
        params = pipeline.validate_params(raw_params)
        declared = [name for name, spec in pipeline.params.items() if spec.type == "s3_prefix"]
        found: dict[str, S3ObjectRef] = {}  # by key: overlapping prefixes list an object once
        for name in (n for n in declared if n in params):
            room = pipeline.max_objects_per_job - len(found)
            for o in self._objects.list_objects(params[name], room, pipeline.trigger.suffix) if room > 0 else []:
                if pipeline.trigger.matches(o["key"]):
                    found.setdefault(o["key"], S3ObjectRef(self._objects.bucket, o["key"], o["size"], o["etag"]))
        objects = list(found.values())
        if declared and not objects:  # a cluster for an empty manifest would only fail, at a price
            name = next((n for n in declared if n in params), declared[0])
            raise NoInputObjects(name, params.get(name, "(not given)"), pipeline.trigger.suffix)
        return self.start_job(pipeline, objects, trigger, params)

    def start_job(
        self,
        pipeline: Pipeline,
        objects: list[S3ObjectRef],
        trigger: Literal["s3", "api", "schedule"],
        params: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Write the manifest, record the job (QUEUED), then launch it."""
        job = Job.new(pipeline.name, trigger, self._clock())
        job = job.model_copy(update={"params": params or {}, "job_id": job_id or job.job_id})
        manifest_key = job_prefix(job.job_id) + "manifest.json"
        # The manifest first: a recorded job never points at a manifest that is not there.
        self._objects.put_json(manifest_key, manifest_document(job, self._objects.bucket, objects))
        job = job.model_copy(
            update={
                "manifest_key": manifest_key,
                "object_count": len(objects),
                "output_prefix": f"{pipeline.output_prefix}{job.job_id}/",
            }
        )
        self._store.create(job)
        log.info("job %s recorded for %d object(s) of pipeline %s", job.job_id, len(objects), pipeline.name)
        # From here on the objects belong to this job: whatever launching does, the messages
        # are acknowledged, so a redelivery can never make a second job for the same files.
        try:
            # Within the cluster caps: LAUNCHING + driver started, or QUEUED until a slot frees.
            return self._launcher.try_launch(job)
        except RayLauncherError:
            log.exception("job %s: launch failed after the job was recorded", job.job_id)
            return self._store.get(job.job_id)
