"""Schedules through the deployed schedule Lambda handler (EventBridge Scheduler payloads), on moto server."""

import pytest

from lambdas.schedule import handler as schedule_handler
from raylauncher.config import load_pipelines
from raylauncher.errors import UnknownPipeline
from raylauncher.local.poller import LocalLambdaContext
from raylauncher.schedules import InvalidScheduleEvent, UnknownSchedule, schedule_input
from tests.conftest import launcher_calls

FIRING = {"pipeline": "sales-summary", "schedule": "nightly", "scheduled_time": "2026-01-02T02:00:00Z"}


def invoke(event: object) -> dict:
    return schedule_handler.handler(event, LocalLambdaContext(function_name="raylauncher-schedule-local"))


def test_a_firing_starts_one_job_with_the_schedules_params(seeded_api) -> None:
    # Given the pipeline's nightly schedule (params declared in pipelines.yaml)
    schedule = load_pipelines(seeded_api.settings.pipelines_file).get("sales-summary").schedules[0]
    # When EventBridge Scheduler invokes the handler with the schedule's Input
    result = invoke(FIRING)
    # Then one job runs with trigger "schedule" and exactly the schedule's params
    (job,) = seeded_api.store.list_jobs()
    assert result == {"job_id": job.job_id, "status": "LAUNCHING", "trigger": "schedule"}
    assert (job.trigger, job.params) == ("schedule", schedule.params)
    assert launcher_calls(seeded_api.settings) == [f"driver start {job.job_id}"]


def test_the_same_firing_twice_makes_one_job(seeded_api) -> None:
    # Given a firing handled once
    first = invoke(FIRING)
    # When the Scheduler delivers it again (at least once), with the time written differently
    again = invoke({**FIRING, "scheduled_time": "2026-01-02T03:00:00+01:00"})
    # Then the same job is returned and nothing new started
    assert again["job_id"] == first["job_id"]
    assert len(seeded_api.store.list_jobs()) == 1 and len(launcher_calls(seeded_api.settings)) == 1
    # but the next night's firing is a new job
    assert invoke({**FIRING, "scheduled_time": "2026-01-03T02:00:00Z"})["job_id"] != first["job_id"]
    assert len(seeded_api.store.list_jobs()) == 2


@pytest.mark.parametrize(
    ("event", "named"),
    [
        ({k: v for k, v in FIRING.items() if k != "scheduled_time"}, "scheduled_time"),
        ({**FIRING, "scheduled_time": "2026-01-02T02:00:00"}, "scheduled_time"),  # no zone
        ({**FIRING, "scheduled_time": "<aws.scheduler.scheduled-time>"}, "scheduled_time"),
        ({**FIRING, "pipeline": "Sales Summary"}, "pipeline"),
        ({**FIRING, "extra": 1}, "extra"),
        ({**FIRING, "schedule": ""}, "schedule"),
        (["not", "an", "object"], "event"),
    ],
)
def test_a_bad_payload_is_refused_with_the_field_named_and_starts_nothing(api, event, named) -> None:
    with pytest.raises(InvalidScheduleEvent) as err:
        invoke(event)
    assert named in str(err.value)
    assert api.store.list_jobs() == [] and launcher_calls(api.settings) == []


@pytest.mark.parametrize(
    ("event", "error"),
    [({**FIRING, "schedule": "hourly"}, UnknownSchedule), ({**FIRING, "pipeline": "no-such-pipeline"}, UnknownPipeline)],
)
def test_an_unknown_schedule_or_pipeline_starts_nothing(api, event, error) -> None:
    with pytest.raises(error):
        invoke(event)
    assert api.store.list_jobs() == []


def test_the_schedule_input_is_what_the_handler_accepts() -> None:
    # The stack puts this on each schedule; the Scheduler fills in the time.
    payload = schedule_input("sales-summary", "nightly")
    assert payload == {"pipeline": "sales-summary", "schedule": "nightly", "scheduled_time": "<aws.scheduler.scheduled-time>"}


def test_a_firing_with_no_input_is_skipped_without_a_job_or_a_retry(api) -> None:
    # Given nothing under the schedule's input prefix
    # When the Scheduler fires
    result = invoke(FIRING)
    # Then the firing is skipped with the reason (returned, not raised: the Scheduler does not retry)
    assert result == {"skipped": "params.input_prefix: no input objects ending in '.csv' under 'incoming/sales/': nothing to run"}
    assert api.store.list_jobs() == [] and launcher_calls(api.settings) == []
