"""The test IAM evaluator (tests/iam_eval.py) decides as AWS documents it, on small policies."""

from __future__ import annotations

import pytest

from tests.iam_eval import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, evaluate, s3_missing_key_status

BUCKET = "arn:aws:s3:::data"


def doc(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def plain(value: object) -> str:
    assert isinstance(value, str)
    return value


LIST_UNDER_IN = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": BUCKET,
                 "Condition": {"StringLike": {"s3:prefix": ["in/*"]}}}  # fmt: skip
GET_IN = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{BUCKET}/in/*"}


def test_a_condition_on_a_key_the_request_lacks_does_not_apply_unless_if_exists_or_negated() -> None:
    # Given a ListBucket grant conditioned on s3:prefix
    # When a request carries the key, Then it is decided by the value
    assert evaluate([doc(LIST_UNDER_IN)], "s3:ListBucket", BUCKET, {"s3:prefix": "in/x"}, plain) == ALLOWED
    assert evaluate([doc(LIST_UNDER_IN)], "s3:ListBucket", BUCKET, {"s3:prefix": "out/"}, plain) == IMPLICIT_DENY
    # When it lacks the key, Then the statement does not apply ...
    assert evaluate([doc(LIST_UNDER_IN)], "s3:ListBucket", BUCKET, {}, plain) == IMPLICIT_DENY
    # ... unless the operator is ...IfExists or negated
    if_exists = {**LIST_UNDER_IN, "Condition": {"StringLikeIfExists": {"s3:prefix": ["in/*"]}}}
    assert evaluate([doc(if_exists)], "s3:ListBucket", BUCKET, {}, plain) == ALLOWED
    negated = {**LIST_UNDER_IN, "Condition": {"StringNotLike": {"s3:prefix": ["secret/*"]}}}
    assert evaluate([doc(negated)], "s3:ListBucket", BUCKET, {}, plain) == ALLOWED
    # And Null tests presence
    absent = {**LIST_UNDER_IN, "Condition": {"Null": {"s3:prefix": "true"}}}
    assert evaluate([doc(absent)], "s3:ListBucket", BUCKET, {}, plain) == ALLOWED
    assert evaluate([doc(absent)], "s3:ListBucket", BUCKET, {"s3:prefix": "x/"}, plain) == IMPLICIT_DENY


def test_actions_match_case_insensitively_with_wildcards_and_an_explicit_deny_wins() -> None:
    deny = {"Effect": "Deny", "Action": "s3:Get*", "Resource": f"{BUCKET}/in/secret*"}
    docs = [doc(GET_IN), doc(deny)]
    assert evaluate(docs, "S3:getobject", f"{BUCKET}/in/a.csv", {}, plain) == ALLOWED
    assert evaluate(docs, "s3:GetObject", f"{BUCKET}/in/secret.csv", {}, plain) == EXPLICIT_DENY
    assert evaluate(docs, "s3:GetObject", f"{BUCKET}/out/a.csv", {}, plain) == IMPLICIT_DENY
    not_action = {"Effect": "Allow", "NotAction": "s3:Delete*", "Resource": "*"}
    assert evaluate([doc(not_action)], "s3:PutObject", f"{BUCKET}/x", {}, plain) == ALLOWED
    assert evaluate([doc(not_action)], "s3:DeleteObject", f"{BUCKET}/x", {}, plain) == IMPLICIT_DENY


def test_an_operator_it_does_not_know_fails_instead_of_matching() -> None:
    odd = {**LIST_UNDER_IN, "Condition": {"NumericLessThan": {"s3:max-keys": "10"}}}
    with pytest.raises(NotImplementedError, match="NumericLessThan"):
        evaluate([doc(odd)], "s3:ListBucket", BUCKET, {"s3:max-keys": "5"}, plain)


def test_a_missing_key_is_404_only_with_list_bucket_in_the_object_requests_context() -> None:
    # Given read access to in/ and a ListBucket grant conditioned on s3:prefix (the request for an
    # object carries no s3:prefix)
    # Then a missing key under in/ answers 403, as S3 does
    assert s3_missing_key_status([doc(GET_IN, LIST_UNDER_IN)], BUCKET, "in/missing", plain) == 403
    # Given ListBucket for requests without s3:prefix too, Then 404
    absent = {**LIST_UNDER_IN, "Condition": {"Null": {"s3:prefix": "true"}}}
    assert s3_missing_key_status([doc(GET_IN, LIST_UNDER_IN, absent)], BUCKET, "in/missing", plain) == 404
    # And without GetObject it is 403 whatever ListBucket says
    assert s3_missing_key_status([doc(LIST_UNDER_IN, absent)], BUCKET, "in/missing", plain) == 403


def test_arn_equals_takes_wildcards_null_takes_any_value_and_references_are_rendered() -> None:
    arn_equals = {"Effect": "Allow", "Action": "sns:Publish", "Resource": "*",
                  "Condition": {"ArnEquals": {"aws:SourceArn": "arn:aws:cloudwatch:*:111122223333:alarm:*"}}}  # fmt: skip
    context = {"aws:SourceArn": "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:x"}
    assert evaluate([doc(arn_equals)], "sns:Publish", "arn:aws:sns:t", context, plain) == ALLOWED
    either = {**LIST_UNDER_IN, "Condition": {"Null": {"s3:prefix": ["true", "false"]}}}
    assert evaluate([doc(either)], "s3:ListBucket", BUCKET, {}, plain) == ALLOWED
    # a condition value that is a template reference is compared as rendered, not as its JSON
    account = {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*",
               "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}  # fmt: skip

    def render(value: object) -> str:
        return "111122223333" if value == {"Ref": "AWS::AccountId"} else plain(value)

    assert evaluate([doc(account)], "sqs:SendMessage", "q", {"aws:SourceAccount": "111122223333"}, render) == ALLOWED
    # and a policy variable it cannot resolve fails loudly
    variable = {**LIST_UNDER_IN, "Condition": {"StringLike": {"s3:prefix": ["home/${aws:username}/*"]}}}
    with pytest.raises(NotImplementedError, match="policy variable"):
        evaluate([doc(variable)], "s3:ListBucket", BUCKET, {"s3:prefix": "home/x/"}, plain)


def test_recorded_requests_are_judged_with_their_context_renamed_to_the_templates() -> None:
    from raylauncher.local.call_log import AwsRequest
    from tests.iam_contract import request_violations

    # Given a role that may launch only tagged instances, read under in/ and list nothing
    run_tagged = {"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "arn:aws:ec2:r:1:instance/*",
                  "Condition": {"StringLike": {"aws:RequestTag/ray-cluster-name": "rl-*"}}}  # fmt: skip
    documents = [doc(run_tagged, GET_IN)]
    launch = "arn:aws:ec2:local:1:instance/*"
    requests = [
        AwsRequest("127.0.0.1", "k", "ec2:RunInstances", launch, {"aws:RequestTag/ray-cluster-name": "rl-j1"}),
        AwsRequest("127.0.0.1", "k", "ec2:RunInstances", launch, {}),  # untagged: denied
        AwsRequest("127.0.0.1", "k", "s3:GetObject", f"{BUCKET}/in/missing.csv", {}, status=404),  # 403 on AWS
        AwsRequest("127.0.0.1", "k", "s3:<unmapped PUT object ?tagging>", f"{BUCKET}/in/x", {}),
    ]
    # When they are judged with local names renamed to the template's
    problems = request_violations("nodes", documents, requests, {"arn:aws:ec2:local:": "arn:aws:ec2:r:"}, plain)
    # Then the tagged launch passes; the untagged one, the 404 S3 would not give and the unnamed request do not
    assert len(problems) == 3, problems
    assert "ImplicitlyDenied" in problems[0] and "would answer 403" in problems[1] and "cannot name" in problems[2]
