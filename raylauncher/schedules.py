"""Schedules: an EventBridge Scheduler schedule starts its pipeline with the schedule's params.

Each schedule the stack deploys invokes the schedule Lambda with `schedule_input(...)` as its
Input; the Scheduler fills in `<aws.scheduler.scheduled-time>`. The Scheduler delivers at least
once (and retries), so a firing is idempotent on (pipeline, schedule, scheduled time): the
same firing twice makes one job (Powertools idempotency on the idempotency table, key
`schedule#<md5 of the firing>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from raylauncher.config import NAME_PATTERN, PipelinesConfig
from raylauncher.errors import RayLauncherError
from raylauncher.intake import IntakeService
from raylauncher.model import Job

#: The Scheduler retries a failed invocation for up to 24 h; a firing is remembered for twice that.
FIRING_EXPIRES_S = 48 * 3600
SCHEDULED_TIME_PLACEHOLDER = "<aws.scheduler.scheduled-time>"


class UnknownSchedule(RayLauncherError):
    def __init__(self, pipeline: str, schedule: str, known: list[str]) -> None:
        super().__init__(f"pipeline {pipeline!r} has no schedule named {schedule!r}; it has {known or 'none'}")
        self.pipeline = pipeline
        self.schedule = schedule


class InvalidScheduleEvent(RayLauncherError):
    """The schedule Lambda got a payload our stack never sends; the message names the field."""


class ScheduleFiring(BaseModel):
    """The payload of one schedule invocation (the schedule's Input, time filled in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str = Field(pattern=NAME_PATTERN)
    schedule: str = Field(min_length=1, max_length=64)
    scheduled_time: AwareDatetime = Field(description="ISO 8601 with a zone, as the Scheduler sends it")


def schedule_input(pipeline: str, schedule: str) -> dict[str, str]:
    """The Input the stack puts on the EventBridge schedule of `pipeline`'s `schedule`."""
    return {"pipeline": pipeline, "schedule": schedule, "scheduled_time": SCHEDULED_TIME_PLACEHOLDER}


def parse_schedule_event(event: Any) -> ScheduleFiring:
    """The firing in a schedule Lambda's event; InvalidScheduleEvent naming the bad field."""
    try:
        return ScheduleFiring.model_validate(event)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in err.errors(include_input=False)
        )
        raise InvalidScheduleEvent(
            f"invalid schedule payload ({problems}); expected {schedule_input('<pipeline>', '<schedule>')}"
        ) from None


def fire(
    service: IntakeService,
    pipelines: PipelinesConfig,
    pipeline_name: str,
    schedule_name: str,
    scheduled_time: datetime,
    *,
    persistence_store: BasePersistenceLayer,
    lambda_context: Any = None,
) -> Job:
    """Start `pipeline_name` with the params of its schedule `schedule_name`, once per
    `scheduled_time`: firing the same schedule and time again returns the job of the first
    firing (as it was recorded then) and starts nothing.

    Raises UnknownPipeline, UnknownSchedule, or what IntakeService.submit raises. Give it a
    persistence layer of its own (Powertools configures a layer once, for its first user)."""
    pipeline = pipelines.get(pipeline_name)
    schedule = next((s for s in pipeline.schedules if s.name == schedule_name), None)
    if schedule is None:
        raise UnknownSchedule(pipeline_name, schedule_name, [s.name for s in pipeline.schedules])
    if scheduled_time.tzinfo is None:
        raise ValueError("scheduled_time must carry a time zone")
    firing = {
        "pipeline": pipeline.name,
        "schedule": schedule.name,
        "scheduled_time": scheduled_time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }

    def start(firing: dict[str, str]) -> dict[str, Any]:
        return service.submit(pipeline.name, dict(schedule.params), trigger="schedule").model_dump(mode="json")

    config = IdempotencyConfig(expires_after_seconds=FIRING_EXPIRES_S, lambda_context=lambda_context)
    once = idempotent_function(
        start, data_keyword_argument="firing", persistence_store=persistence_store, config=config, key_prefix="schedule"
    )
    return Job.model_validate(once(firing=firing))


@dataclass(frozen=True)
class ScheduleRunner:
    """What the schedule Lambda needs; built once per Lambda instance (wiring)."""

    service: IntakeService
    pipelines: PipelinesConfig
    persistence_store: BasePersistenceLayer

    def fire(self, firing: ScheduleFiring, lambda_context: Any = None) -> Job:
        return fire(
            self.service, self.pipelines, firing.pipeline, firing.schedule, firing.scheduled_time,
            persistence_store=self.persistence_store, lambda_context=lambda_context,
        )  # fmt: skip
