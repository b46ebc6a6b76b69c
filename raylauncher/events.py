"""Job lifecycle events: every change of a job's status is published as a "Ray Job State Change"
event (source `raylauncher`) on an EventBridge bus — a port, its EventBridge adapter, a null
adapter, and the one function that builds the event (its schema: `JobStateChange`, committed
as docs/events.schema.json).

Delivery is best-effort and at-least-once: an event is published after its transition is
written, and a failure to publish is logged, never raised — it never blocks or fails a job.
Events of one job may arrive out of order: order them by `detail.version`.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from typing import Any, Literal

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from raylauncher.aws import error_code
from raylauncher.model import FAILURE_CLASS, FailureClass, Job, JobStatus, ReasonCode, parse_iso

log = logging.getLogger(__name__)

SOURCE = "raylauncher"
DETAIL_TYPE = "Ray Job State Change"
#: What the stack's rules and the local rule match: every event this module publishes.
EVENT_PATTERN: dict[str, list[str]] = {"source": [SOURCE], "detail-type": [DETAIL_TYPE]}
SCHEMA_VERSION = 1
#: The owner the watchdog writes when it takes a job over (raylauncher.watchdog.WATCHDOG_OWNER);
#: drivers own jobs as "driver:<host>:<token>" — events say which kind, never the token.
WATCHDOG_OWNER = "watchdog"
DRIVER_OWNER_PREFIX = "driver:"
#: Reason messages can be long (a `ray up` stderr tail); the event keeps their start.
REASON_MESSAGE_MAX_CHARS = 1000
#: Publishing is best-effort: a short timeout and one retry, so a slow EventBridge costs a
#: transition seconds at most (the default client retries for much longer).
PUBLISH_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2, read_timeout=5)


class JobStateChange(BaseModel):
    """The `detail` of a "Ray Job State Change" event: one status change of one job."""

    # New fields are not an incompatible change: readers ignore what they do not know.
    model_config = ConfigDict(populate_by_name=True, title="RayJobStateChange")

    schema_version: Literal[1] = Field(description="bumped on an incompatible change of this schema")
    job_id: str
    run_id: str = Field(description="the attempt's Ray submission id and cluster key: <job_id> or <job_id>-a<n>")
    pipeline: str
    trigger: Literal["s3", "api", "schedule"]
    attempt: int = Field(ge=1, description="the job's attempt after the change (a retry event names the next one)")
    version: int = Field(
        ge=0, description="the job's version after the change: grows with every change (may skip); order a job's events by it"
    )
    from_: JobStatus | None = Field(
        alias="from", description="null when the job was just recorded; equal to `to` when the watchdog took it over"
    )
    to: JobStatus
    driven_by: Literal["driver", "watchdog"] | None = Field(
        description="who drives the job after the change: its driver, the watchdog (its driver was lost), nobody yet"
    )
    terminal: bool = Field(description="`to` is final: the job will not change again")
    reason_code: ReasonCode | None = Field(
        description="why the job did not succeed; on a retry (to QUEUED), why the attempt that ended failed"
    )
    reason_message: str | None = Field(max_length=REASON_MESSAGE_MAX_CHARS, description="human text, clipped")
    failure_class: FailureClass | None = Field(description="the reason's retry class (model.FAILURE_CLASS)")
    retries_exhausted: bool = Field(
        description="the job ended with an infrastructure failure: no attempt is left to retry it"
    )
    phase_times: dict[str, str] = Field(description="status -> when the current attempt entered it (ISO 8601, UTC)")
    cluster_seconds: float = Field(ge=0, description="seconds clusters of this job were up, all attempts, so far")
    time: str = Field(description="when the change was written (ISO 8601, UTC): the event's time too")
    cluster_key: str | None = Field(
        default=None, description="the kept cluster's record this attempt ran on or left (warm clusters, holds)"
    )
    warm: bool = Field(default=False, description="the attempt ran on a warm cluster (no `ray up`)")
    kept: Literal["warm", "held"] | None = Field(
        default=None, description="the cluster stayed up after the job: warm for the next job, or held for debugging"
    )
    kept_seconds: float | None = Field(
        default=None, ge=0, description="how long it stayed up idle or held after the job (set when that ended; "
        "announced as a same-status event)"
    )


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= REASON_MESSAGE_MAX_CHARS:
        return text
    return text[: REASON_MESSAGE_MAX_CHARS - 1] + "…"


def _reason(before: Job | None, after: Job) -> tuple[ReasonCode | None, str | None]:
    """The job's reason; for a retry (back to QUEUED), the reason of the attempt that ended
    (the retry clears the job's own and keeps it in `attempts`)."""
    if after.reason_code is None and after.status == JobStatus.QUEUED and before is not None and after.attempts:
        ended = after.attempts[-1]
        code = ended.get("reason_code")
        known = code in {r.value for r in ReasonCode}
        return (ReasonCode(code) if known else None), ended.get("reason_message")
    return after.reason_code, after.reason_message


def _driven_by(owner: str | None) -> Literal["driver", "watchdog"] | None:
    if owner == WATCHDOG_OWNER:
        return "watchdog"
    return "driver" if owner and owner.startswith(DRIVER_OWNER_PREFIX) else None


def state_change(before: Job | None, after: Job) -> JobStateChange:
    """The event detail of `before` -> `after` (`before` None: `after` was just recorded)."""
    reason_code, reason_message = _reason(before, after)
    failure_class = FAILURE_CLASS.get(reason_code) if reason_code else None
    return JobStateChange(
        schema_version=SCHEMA_VERSION,
        job_id=after.job_id,
        run_id=after.run_id,
        pipeline=after.pipeline,
        trigger=after.trigger,
        attempt=after.attempt,
        version=after.version,
        from_=before.status if before else None,
        to=after.status,
        driven_by=_driven_by(after.owner),
        terminal=after.is_terminal,
        reason_code=reason_code,
        reason_message=_clip(reason_message),
        failure_class=failure_class,
        retries_exhausted=after.is_terminal and failure_class == FailureClass.INFRASTRUCTURE,
        phase_times=dict(after.phase_times),
        cluster_seconds=round(after.cluster_seconds(parse_iso(after.updated_at)), 3),
        time=after.updated_at,
        cluster_key=after.cluster_key,
        warm=after.warm,
        kept=after.kept,
        kept_seconds=after.kept_seconds,
    )


def state_change_entry(before: Job | None, after: Job, bus_name: str) -> dict[str, Any]:
    """The PutEvents entry of `before` -> `after` on `bus_name`."""
    detail = state_change(before, after)
    return {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPE,
        "Detail": detail.model_dump_json(by_alias=True),
        "EventBusName": bus_name,
        "Time": parse_iso(detail.time),
    }


def detail_json_schema() -> dict[str, Any]:
    """The JSON Schema of the event's `detail` (what docs/events.schema.json holds)."""
    schema = JobStateChange.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "description": f'The detail of a "{DETAIL_TYPE}" event (source "{SOURCE}"): one status change of one '
                       "job. See docs/events.md; generated by `python -m raylauncher.events`.",
    }  # fmt: skip


def detail_json_schema_text() -> str:
    return json.dumps(detail_json_schema(), indent=1, sort_keys=False)


class JobEvents(ABC):
    """Port: where job state changes are announced."""

    @abstractmethod
    def job_changed(self, before: Job | None, after: Job) -> bool:
        """Announce `before` -> `after` (`before` None: a new job). Never raises: returns whether
        the event was accepted."""


class NullJobEvents(JobEvents):
    """No bus configured: nothing is published."""

    def job_changed(self, before: Job | None, after: Job) -> bool:
        return False


class EventBridgeJobEvents(JobEvents):
    """The EventBridge adapter: one PutEvents per change, failures logged with their code."""

    def __init__(self, events_client: Any, bus_name: str) -> None:
        self._events = events_client
        self._bus = bus_name

    def job_changed(self, before: Job | None, after: Job) -> bool:
        change = f"{before.status.value if before else '-'} -> {after.status.value}"
        try:
            response = self._events.put_events(Entries=[state_change_entry(before, after, self._bus)])
        except (ClientError, BotoCoreError) as err:
            log.warning("job %s: state change %s not published: %s", after.job_id, change, error_code(err))
            return False
        except Exception:  # the transition is already written: a bug here must not fail the job
            log.exception("job %s: state change %s not published", after.job_id, change)
            return False
        if response.get("FailedEntryCount"):
            entry = (response.get("Entries") or [{}])[0]
            log.warning("job %s: state change %s refused by the bus: %s %s", after.job_id, change,
                        entry.get("ErrorCode"), entry.get("ErrorMessage"))  # fmt: skip
            return False
        return True


if __name__ == "__main__":  # python -m raylauncher.events > docs/events.schema.json
    print(detail_json_schema_text())
