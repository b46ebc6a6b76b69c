"""The moto server's call log (raylauncher.local.stack._CallLog) tells the EC2 stand-in of every
call that starts or ends instances, once moto has served it, so the stand-in makes or ends its
nodes at once instead of listing every instance several times a second."""

from __future__ import annotations

import io
from typing import Any

from raylauncher.local.stack import _CallLog

AUTH = "AWS4-HMAC-SHA256 Credential=local-bastion-role/20261206/us-east-1/ec2/aws4_request, SignedHeaders=host"


def request(action: str) -> dict[str, Any]:
    body = f"Action={action}&Version=2016-11-15".encode()
    return {"HTTP_AUTHORIZATION": AUTH, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1"}  # fmt: skip


class App:
    """moto's side: records what it served, in order with the listener's calls."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.order.append("served " + environ["wsgi.input"].read().decode().split("&")[0])
        return [b"<ok/>"]


def test_instance_changes_are_told_after_they_are_served_and_other_calls_are_not() -> None:
    # Given a call log with one listener
    order: list[str] = []
    log = _CallLog(App(order))
    log.instance_listeners.append(lambda: order.append("told"))
    # When instances are started, listed and terminated
    for action in ("RunInstances", "DescribeInstances", "TerminateInstances"):
        assert log(request(action), lambda *a: None) == [b"<ok/>"]
    # Then the listener heard of the start and the end, each after moto served it, not of the listing
    assert order == ["served Action=RunInstances", "told", "served Action=DescribeInstances",
                     "served Action=TerminateInstances", "told"]  # fmt: skip
    assert log.ec2_calls[("127.0.0.1", "local-bastion-role", "RunInstances")] == 1


def test_a_failing_listener_does_not_fail_a_call_that_was_served() -> None:
    # Given a listener that raises (a served RunInstances answered with an error would be retried:
    # instances launched twice)
    order: list[str] = []
    log = _CallLog(App(order))

    def broken() -> None:
        raise RuntimeError("listener broke")

    log.instance_listeners.append(broken)
    # When instances are started, Then the caller still gets moto's answer
    assert log(request("RunInstances"), lambda *a: None) == [b"<ok/>"]
    assert order == ["served Action=RunInstances"]
