"""The local API server's events look like an API Gateway REST API's (proxy, payload 1.0)."""

from raylauncher.local.http_api import to_rest_event


def test_a_request_becomes_a_rest_proxy_event() -> None:
    # Given a request with an encoded path, a repeated query parameter and a repeated header
    event = to_rest_event(
        "POST", "/jobs/a%20b/cancel?status=FAILED&x=1&x=%C3%A9",
        [("Content-Type", "application/json"), ("X-Tag", "a"), ("X-Tag", "b")], b'{"k": "v"}',
        source_ip="127.0.0.1", request_id="req-1",
    )  # fmt: skip
    # Then the path stays encoded (as API Gateway REST APIs deliver it), parameters are decoded
    assert (event["httpMethod"], event["path"], event["resource"]) == ("POST", "/jobs/a%20b/cancel", "/{proxy+}")
    assert event["pathParameters"] == {"proxy": "jobs/a b/cancel"}
    assert event["queryStringParameters"] == {"status": "FAILED", "x": "é"}
    assert event["multiValueQueryStringParameters"] == {"status": ["FAILED"], "x": ["1", "é"]}
    assert event["headers"]["X-Tag"] == "b" and event["multiValueHeaders"]["X-Tag"] == ["a", "b"]
    assert (event["body"], event["isBase64Encoded"]) == ('{"k": "v"}', False)
    context = event["requestContext"]
    assert (context["requestId"], context["stage"], context["identity"]["sourceIp"]) == ("req-1", "local", "127.0.0.1")


def test_an_empty_request_has_nulls_where_api_gateway_has_them() -> None:
    event = to_rest_event("GET", "/", [], b"")
    assert event["body"] is None and event["queryStringParameters"] is None and event["pathParameters"] is None
    assert event["multiValueQueryStringParameters"] is None and event["headers"] is None
