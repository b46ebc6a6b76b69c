"""The stack's job events: the bus, the rule local mode uses too, who may publish, and the alarms
on the job metrics (assertions on the synthesized template)."""

from __future__ import annotations

from typing import Any

import pytest

import raylauncher.local.stack as local_stack
from cdk.functions import service_name
from raylauncher.events import EVENT_PATTERN, WATCHDOG_OWNER, state_change
from raylauncher.job_metrics import JOB_ALARMS, state_change_metrics
from raylauncher.model import Job, JobStatus, ReasonCode
from raylauncher.watchdog import METRICS_NAMESPACE
from tests.infrastructure.conftest import Synthesized, render
from tests.infrastructure.test_stack_contract import bastion_parameter
from tests.infrastructure.test_stack_security import as_list

# pytest-xdist: one worker runs these tests (they share the synthesized stacks are made once per worker).
pytestmark = pytest.mark.xdist_group("cdk-synth")


def bus_ref(s: Synthesized) -> dict[str, Any]:
    return {"Ref": s.logical_id(s.stack.job_events.bus)}


def put_events_grants(s: Synthesized) -> dict[str, list[Any]]:
    """IAM policy logical id -> the resources its events:PutEvents statements name."""
    found: dict[str, list[Any]] = {}
    for policy_id, policy in s.resources("AWS::IAM::Policy").items():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "events:PutEvents" in as_list(statement["Action"]):
                found.setdefault(policy_id, []).extend(as_list(statement["Resource"]))
    return found


def test_the_rule_on_the_bus_is_the_local_rule_and_invokes_the_metrics_lambda(default_stack: Synthesized) -> None:
    s = default_stack
    # Given the one rule of the stack (the local bootstrap uses the very same pattern object)
    assert local_stack.EVENT_PATTERN is EVENT_PATTERN
    [rule] = s.resources("AWS::Events::Rule").values()
    props = rule["Properties"]
    # Then it is on our bus, matches our events only, and targets the metrics Lambda with retries
    assert props["EventBusName"] == bus_ref(s)
    assert props["EventPattern"] == EVENT_PATTERN
    [target] = props["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [s.logical_id(s.stack.job_events.metrics_function), "Arn"]}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0
    fn = s.resource(s.stack.job_events.metrics_function)["Properties"]
    assert fn["Handler"] == "lambdas.job_metrics.handler.handler"
    assert fn["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == service_name("job_metrics")


def test_every_writer_of_jobs_names_the_bus_and_may_publish_on_it_only(default_stack: Synthesized) -> None:
    s = default_stack
    # Given the functions that record and move jobs, and the bastion (its drivers)
    writers = {name: s.resource(fn) for name, fn in s.stack.functions.items()}
    assert set(writers) == {"intake", "api", "schedule", "watchdog"}
    # Then each has the bus in its settings, and the driver's settings name it too
    for fn in writers.values():
        assert fn["Properties"]["Environment"]["Variables"]["RAYLAUNCHER_EVENT_BUS"] == bus_ref(s)
    driver_env = dict(line.split("=", 1) for line in bastion_parameter(s, "env").splitlines())
    assert driver_env["RAYLAUNCHER_EVENT_BUS"] == render(bus_ref(s))
    # And PutEvents is granted on this bus's ARN only: to the four roles and the bastion's
    grants = put_events_grants(s)
    assert all(r == {"Fn::GetAtt": [s.logical_id(s.stack.job_events.bus), "Arn"]} for rs in grants.values() for r in rs)
    roles = {role["Ref"] for policy_id in grants for role in s.template_json["Resources"][policy_id]["Properties"]["Roles"]}
    expected = {s.logical_id(fn.role) for fn in s.stack.functions.values()} | {s.logical_id(s.stack.bastion.role)}
    assert roles == expected
    # And the metrics Lambda (which only reads events) may not publish
    assert s.logical_id(s.stack.job_events.metrics_function.role) not in roles


def test_driver_lost_teardown_failed_and_retries_exhausted_page_the_alerts_topic(default_stack: Synthesized) -> None:
    s = default_stack
    topic = {"Ref": s.logical_id(s.stack.alerts.topic)}
    alarms = {a["Properties"]["MetricName"]: a["Properties"] for a in s.resources("AWS::CloudWatch::Alarm").values()
              if a["Properties"].get("MetricName") in JOB_ALARMS}  # fmt: skip
    assert set(alarms) == {"DriverLost", "TeardownFailed", "RetriesExhausted"}
    for props in alarms.values():
        # Then each watches the metric the metrics Lambda writes (namespace, service dimension only)
        assert props["Namespace"] == METRICS_NAMESPACE
        assert props["Dimensions"] == [{"Name": "service", "Value": service_name("job_metrics")}]
        assert (props["Statistic"], props["Threshold"], props["ComparisonOperator"]) == (
            "Sum", 1, "GreaterThanOrEqualToThreshold")  # fmt: skip
        assert props["TreatMissingData"] == "notBreaching" and props["AlarmActions"] == [topic]
    # And the metric points behind them carry no other dimension (else the alarm would see no data)
    running = Job.new("sales-summary", "s3").model_copy(update={"status": JobStatus.RUNNING, "version": 3})
    lost = running.model_copy(update={"status": JobStatus.TEARING_DOWN, "version": 4, "owner": WATCHDOG_OWNER,
                                      "reason_code": ReasonCode.DRIVER_LOST})  # fmt: skip
    [point] = [p for p in state_change_metrics(state_change(running, lost)) if p.name == "DriverLost"]
    assert point.dimensions == {}
    # And a failing metrics Lambda pages too
    errors = s.resource(s.stack.alerts.alarms["job_metrics_errors"])["Properties"]
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": s.logical_id(s.stack.job_events.metrics_function)}}]
    assert errors["AlarmActions"] == [topic]


def test_the_bus_name_is_an_output(default_stack: Synthesized) -> None:
    assert default_stack.template_json["Outputs"]["JobEventBus"]["Value"] == bus_ref(default_stack)
