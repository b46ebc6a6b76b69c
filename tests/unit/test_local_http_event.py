"""The local API server's events look like an API Gateway REST API's (proxy, payload 1.0)."""

from raylauncher.local.http_api import to_rest_event
from raylauncher.local.identities import StsIdentities, access_key_id


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


def test_iam_authorization_fields_land_in_the_identity() -> None:
    # Given what IAM authorization resolved for the request's signer
    identity = {"accessKey": "AKIAEXAMPLE", "accountId": "123456789012", "caller": "AIDAEXAMPLE",
                "user": "AIDAEXAMPLE", "userArn": "arn:aws:iam::123456789012:user/alice"}  # fmt: skip
    # When the event is built, Then they sit in requestContext.identity next to the source IP
    event = to_rest_event("POST", "/jobs", [("User-Agent", "ua")], b"", identity=identity)
    assert event["requestContext"]["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "ua", **identity}
    # and the API reads the caller from there, as it does on AWS
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

    assert APIGatewayProxyEvent(event).request_context.identity.user_arn == identity["userArn"]


def test_the_access_key_id_of_a_sigv4_request() -> None:
    signed = ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/execute-api/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=" + "a" * 64)  # fmt: skip
    assert access_key_id([("Host", "x"), signed]) == "AKIAEXAMPLE"
    assert access_key_id([("authorization", signed[1].replace("AKIAEXAMPLE", "testing"))]) == "testing"
    # Unsigned, another scheme, a malformed header: no key id
    assert access_key_id([]) is None
    assert access_key_id([("Authorization", "Bearer abc")]) is None
    assert access_key_id([("Authorization", "AWS4-HMAC-SHA256 Credential=/x")]) is None


def test_an_unreachable_sts_gives_no_identity() -> None:
    # Given STS cannot be reached (nothing listens on the port)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    identities = StsIdentities(f"http://127.0.0.1:{port}", "us-east-1", timeout_s=2)
    signed = [("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/execute-api/aws4_request, x")]
    # Then a signed request has no userArn (refused where a pipeline has a list), an unsigned one nothing
    assert identities(signed) == {"accessKey": "AKIAEXAMPLE"}
    assert identities([]) == {}
