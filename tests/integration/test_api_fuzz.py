"""Fuzzing the API handler: whatever a client sends, the answer is never a 5xx, and every error
has the one error shape. Requests go through the deployed handler as REST API proxy events."""

import base64
import json
import time
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

MIN_REQUESTS = 1000
JOB_ID = "sales-summary-20260101-000000-deadbeef"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
prefixes = st.sampled_from(["incoming/sales/", "incoming/sales/x/", "outputs/", "", "incoming/sales/../"])
valid_params = st.fixed_dictionaries({}, optional={"input_prefix": prefixes})
HUGE = [
    json.dumps({"pipeline": "sales-summary", "params": {"input_prefix": "incoming/sales/" + "é" * 200_000}}),
    json.dumps({"pipeline": "x" * 300_000}),
    json.dumps({"pipeline": "sales-summary", "params": {f"k{i}": i for i in range(20_000)}}),
    "[" * 200_000 + "]" * 200_000,
    '{"a":' * 50_000 + "1" + "}" * 50_000,
    "9" * 100_000,
    '"' + "\\ud800" * 10_000 + '"',
    "\x00" * 10_000,
    # lone surrogates: JSON can escape them, UTF-8 (S3 keys, DynamoDB) cannot carry them
    '{"pipeline": "sales-summary", "params": {"input_prefix": "incoming/sales/\\udc80"}}',
    '{"pipeline": "sales-summary\\ud800"}',
]
valid_bodies = st.builds(lambda p: json.dumps({"pipeline": "sales-summary", "params": p}), valid_params)
bodies = st.one_of(
    valid_bodies,
    valid_bodies,
    valid_bodies,
    st.none(),
    st.builds(lambda p, v: json.dumps({"pipeline": p, "params": v}), st.text(max_size=40), json_values),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.sampled_from(['{"pipeline": NaN}', '{"pipeline": Infinity}', "{", "}", "null", '""', "1e999999", "[]"]),
    st.sampled_from(HUGE),
)
# A few keys come back often, so keys get reused with the same and with other bodies.
header_values = st.one_of(
    st.sampled_from(["k-1", "k-2", "k-3"]),
    st.sampled_from(["k-1", "k-2", "k-3"]),
    st.text(max_size=60),
    st.sampled_from(["", " ", "a" * 5000, "k-1,k-2", "日本"]),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.one_of(
            st.just("application/json"),
            st.sampled_from(
                ["application/json; charset=utf-8", "text/plain", "multipart/form-data", "application/xml", "",
                 "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "APPLICATION/JSON"]
            ),
        ),  # fmt: skip
        "Idempotency-Key": header_values,
        "idempotency-key": header_values,
        "Accept": header_values,
    },
)
EXISTING = "<an existing job>"  # replaced by the id of a job an earlier request made
segments = st.one_of(
    st.sampled_from([JOB_ID, EXISTING, EXISTING]),
    st.sampled_from(["..", ".", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%00", "%", "a" * 300, "JOBS", "", "日本", "a b"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#"), max_size=30),
)
queries = st.dictionaries(
    st.sampled_from(["pipeline", "status", "limit", "next_token", "x", ""]),
    st.one_of(
        st.text(max_size=40),
        st.sampled_from(["sales-summary", "QUEUED", "FAILED", "0", "1", "100", "101", "-1", "1e3", "eyJhIjogMX0"]),
    ),
    max_size=4,
)
# Mostly the API's own routes (so the requests get past the router), some anything at all.
routes = st.one_of(
    st.tuples(st.just("POST"), st.just("/jobs")),
    st.tuples(st.just("GET"), st.just("/jobs")),
    st.tuples(st.just("GET"), segments.map(lambda s: f"/jobs/{s}")),
    st.tuples(st.just("POST"), segments.map(lambda s: f"/jobs/{s}/cancel")),
)
anything = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW", ""]),
    st.one_of(
        st.sampled_from(["/", "//jobs", "/jobs/", "/jobs/../jobs", "/jobs?", "jobs", "/JOBS", "/jobs/%2F"]),
        st.lists(segments, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    ),
)
requests = st.fixed_dictionaries(
    {
        "route": st.one_of(routes, routes, routes, anything),
        "query": queries,
        "headers": headers,
        "body": bodies,
        "base64": st.booleans(),
        "pick": st.integers(min_value=0, max_value=10_000),
    }
)


def check_shape(status: int, body: Any) -> None:
    assert status < 500, (status, body)
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"code", "message", "field"}, error
        assert isinstance(error["code"], str) and error["code"].isupper(), error
        assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"], error
        assert error["field"] is None or isinstance(error["field"], str), error
    else:
        assert isinstance(body, dict), body


def test_no_request_gets_a_5xx_and_every_error_has_the_shape(seeded_api) -> None:
    sent: list[float] = []
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    made: list[str] = []

    @settings(
        max_examples=1100,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(request=requests)
    def one_request(request: dict[str, Any]) -> None:
        method, path = request["route"]
        if EXISTING in path:
            path = path.replace(EXISTING, made[request["pick"] % len(made)] if made else JOB_ID)
        event = seeded_api.event(method, path, None, headers=request["headers"], query=request["query"])
        body = request["body"]
        if request["base64"] and body is not None:
            # sometimes valid base64 of the text, sometimes the raw text claimed to be base64
            event["body"] = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode() if len(body) % 2 else body
            event["isBase64Encoded"] = True
        else:
            event["body"] = body
        started = time.perf_counter()
        response = seeded_api.send(event)
        sent.append(time.perf_counter() - started)
        statuses[response.status] += 1
        if response.status >= 400 and isinstance(response.body, dict):
            codes[str(response.body.get("error", {}).get("code"))] += 1
        if response.status == 202 and method == "POST" and response.body["job_id"] not in made:
            # a new job: POST /jobs (or a spelling the router also takes, e.g. "/jobs/"); a 202
            # from a cancel names a job made earlier
            made.append(response.body["job_id"])
        check_shape(response.status, response.body)

    started = time.monotonic()
    one_request()
    elapsed = time.monotonic() - started
    print(
        f"\nfuzz: {len(sent)} requests in {elapsed:.1f}s ({len(sent) / elapsed:.0f}/s), "
        f"slowest {max(sent) * 1000:.0f} ms\n  statuses {dict(sorted(statuses.items()))}"
        f"\n  error codes {dict(codes.most_common())}"
    )
    assert len(sent) >= MIN_REQUESTS
    # the requests reached every kind of answer, not just the router's 404
    assert {200, 202, 400, 404, 422} <= set(statuses), statuses
    assert len(seeded_api.store.list_jobs()) == len(made)  # a job for every 202 on POST /jobs, no other
