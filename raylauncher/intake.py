"""Intake: S3 object-created events in, one job per pipeline per batch out.

Decoding follows S3's event encoding: object keys arrive URL-encoded with '+' for a space
(`%2B` is a real plus), so `unquote_plus` gives back the key as it is in the bucket.

Exact inputs: a job reads exactly the object versions its manifest names. In a versioned
bucket every distinct (key, versionId) of a batch is an entry of its own — two versions of one
key are both read. Without a version id (an unversioned bucket, or versioning suspended: the
"null" version) a key can only be read as it is when the job runs, so the notifications of
one key in one batch become one entry, read at the key, and the older ones are recorded on
the manifest as `superseded` (ordered by `sequencer`, see `compare_sequencers`). Every
notification of a batch is thus either a manifest object, a superseded entry of a manifest,
or a duplicate of a version another job already holds (claims) — never acknowledged otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from raylauncher.admission import Launcher
from raylauncher.config import Pipeline, PipelinesConfig
from raylauncher.errors import NoInputObjects, PoisonMessage, RayLauncherError
from raylauncher.claims import ObjectClaims, claim_id
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


def compare_sequencers(a: str, b: str) -> int:
    """-1, 0 or 1 as S3 event `a` happened before, with, or after `b` (same key only).

    As AWS documents: sequencers are hex strings of varying length; left-pad the shorter with
    zeros, then compare the strings (case-insensitively: hex digits)."""
    width = max(len(a), len(b))
    x, y = a.upper().rjust(width, "0"), b.upper().rjust(width, "0")
    return (x > y) - (x < y)


def newest(refs: Sequence[S3ObjectRef]) -> S3ObjectRef:
    """The latest of notifications of one key: by sequencer; when one of two has none (or they
    are equal), the later arrival (`refs` in arrival order)."""
    latest = refs[0]
    for ref in refs[1:]:
        if latest.sequencer is None or ref.sequencer is None or compare_sequencers(ref.sequencer, latest.sequencer) >= 0:
            latest = ref
    return latest


def batch_entries(refs: Sequence[S3ObjectRef]) -> list[list[S3ObjectRef]]:
    """Group distinct refs (arrival order) into manifest entries: each version of a versioned
    object alone; all notifications of an unversioned key together (read once, at the key)."""
    entries: list[list[S3ObjectRef]] = []
    unversioned: dict[tuple[str, str], list[S3ObjectRef]] = {}
    for ref in refs:
        if ref.version_id is not None:
            entries.append([ref])
        elif (ref.bucket, ref.key) in unversioned:
            unversioned[(ref.bucket, ref.key)].append(ref)
        else:
            entries.append(unversioned.setdefault((ref.bucket, ref.key), [ref]))
    return entries


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
                    # "null" is the version of an object written while versioning was off or
                    # suspended: overwritten in place, so it is no version at all.
                    version_id=obj.get("versionId") if obj.get("versionId") not in ("", "null") else None,
                    sequencer=obj.get("sequencer"),
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PoisonMessage(f"Records[{i}] is not an S3 object record ({type(err).__name__}: {err})") from None
    return tuple(refs)


def _entry(ref: S3ObjectRef) -> dict[str, Any]:
    return {k: v for k, v in asdict(ref).items() if k != "bucket"}


def manifest_document(
    job: Job,
    bucket: str,
    objects: Iterable[S3ObjectRef],
    superseded: Sequence[tuple[S3ObjectRef, S3ObjectRef]] = (),
) -> dict:
    """What the Ray job reads: the exact objects it must process (`version_id` set: that
    version; null: the key as it is), and the run's params. `superseded` lists notifications
    of unversioned keys that this job covers by reading a later write of the same key."""
    document = {
        "job_id": job.job_id,
        "pipeline": job.pipeline,
        "bucket": bucket,
        "params": job.params,
        "objects": [_entry(o) for o in objects],
    }
    if superseded:
        document["superseded"] = [
            _entry(old) | {"superseded_by": {"etag": new.etag, "sequencer": new.sequencer}} for old, new in superseded
        ]
    return document


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
        release: str | None = None,
    ) -> None:
        """`release`: the deployment's release id, stamped on every job (raylauncher/releases.py)."""
        self._release = release
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
        # Per pipeline: its distinct notifications (by object version; a notification delivered
        # twice in one batch counts once) and the messages that carried them.
        groups: dict[str, tuple[Pipeline, dict[str, S3ObjectRef], set[str]]] = {}
        for message in messages:
            for ref in message.objects:
                pipeline = self._pipelines.match(ref.key) if ref.bucket == self._objects.bucket else None
                if pipeline is None:
                    log.warning("ignoring s3://%s/%s: no pipeline is triggered by it", ref.bucket, ref.key)
                    result.ignored.append(ref)
                    continue
                _, refs, ids = groups.setdefault(pipeline.name, (pipeline, {}, set()))
                refs.setdefault(claim_id(ref), ref)
                ids.add(message.message_id)
        for pipeline, refs, ids in groups.values():
            entries = batch_entries(list(refs.values()))
            try:
                # Burst coalescing: one job per batch and pipeline, at most max_objects_per_job each.
                for first in range(0, len(entries), pipeline.max_objects_per_job):
                    job = self._start_s3_job(pipeline, entries[first : first + pipeline.max_objects_per_job])
                    if job is not None:
                        result.jobs.append(job)
            except RayLauncherError:
                log.exception("could not start a job for pipeline %s; its messages will be retried", pipeline.name)
                result.failed_message_ids.extend(sorted(ids - set(result.failed_message_ids)))
        return result

    def _start_s3_job(self, pipeline: Pipeline, entries: list[list[S3ObjectRef]]) -> Job | None:
        """Claim every notification of the entries, then start a job for those not already
        another job's (None if every one was a duplicate delivery): per entry the newest one
        claimed is read, the other claimed ones are recorded as superseded by it. If the job
        cannot be recorded, the claims are released and the error propagates (the messages are
        retried)."""
        job_id = new_job_id(pipeline.name, self._clock())
        refs = [ref for entry in entries for ref in entry]
        claimed = self._claims.claim(refs, job_id) if self._claims else refs
        if not claimed:
            log.info("all %d object(s) were already taken by other jobs (duplicate delivery)", len(refs))
            return None
        won = {claim_id(ref) for ref in claimed}
        objects: list[S3ObjectRef] = []
        superseded: list[tuple[S3ObjectRef, S3ObjectRef]] = []
        for entry in entries:
            mine = [ref for ref in entry if claim_id(ref) in won]
            if mine:
                read = newest(mine)
                objects.append(read)
                superseded += [(ref, read) for ref in mine if ref is not read]
        try:
            return self.start_job(pipeline, objects, "s3", job_id=job_id, superseded=superseded)
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
        superseded: Sequence[tuple[S3ObjectRef, S3ObjectRef]] = (),
    ) -> Job:
        """Write the manifest, record the job (QUEUED), then launch it."""
        job = Job.new(pipeline.name, trigger, self._clock())
        job = job.model_copy(update={"params": params or {}, "job_id": job_id or job.job_id, "release": self._release})
        manifest_key = job_prefix(job.job_id) + "manifest.json"
        # The manifest first: a recorded job never points at a manifest that is not there.
        self._objects.put_json(manifest_key, manifest_document(job, self._objects.bucket, objects, superseded))
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
