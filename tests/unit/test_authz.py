"""Per-pipeline authorization (raylauncher/authz.py): who may start a run of a pipeline over the
HTTP API, and cancel its jobs; and the config field that lists them, validated at load."""

from __future__ import annotations

import json

import pytest

from raylauncher.authz import Caller, authorize_trigger, matches
from raylauncher.config import Pipeline, parse_pipelines, pipelines_json
from raylauncher.errors import ConfigError, NotAllowed

ACCOUNT = "123456789012"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
MALLORY = f"arn:aws:iam::{ACCOUNT}:user/mallory"
DEPLOYER_SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci-run-42"


def pipeline(allowed: list[str] | None, **overrides: object) -> Pipeline:
    data = {
        "name": "sales-summary",
        "trigger": {"prefix": "incoming/sales/", "suffix": ".csv"},
        "entrypoint": {"script": "jobs/sales_summary/main.py"},
        "output_prefix": "outputs/sales-summary/",
        "allowed_principals": allowed,
        **overrides,
    }
    return parse_pipelines({"pipelines": [data]}).pipelines[0]


def allowed(patterns: list[str] | None, arn: str | None) -> bool:
    try:
        authorize_trigger(pipeline(patterns), Caller(arn))
    except NotAllowed:
        return False
    return True


# ------------------------------------------------------------------ matching


def test_a_user_on_the_list_may_and_one_not_on_it_may_not() -> None:
    # Given a pipeline that lists alice, When alice and mallory trigger it
    # Then alice may; mallory is refused, the error naming her and the pipeline
    assert allowed([ALICE], ALICE)
    with pytest.raises(NotAllowed) as err:
        authorize_trigger(pipeline([ALICE]), Caller(MALLORY))
    assert (err.value.pipeline, err.value.principal, err.value.job_id) == ("sales-summary", MALLORY, None)
    assert MALLORY in str(err.value) and "'sales-summary'" in str(err.value) and "allowed_principals" in str(err.value)


def test_matching_is_case_sensitive_and_whole() -> None:
    # Given alice's exact ARN on the list, Then another case, a prefix or a longer name do not match
    assert not allowed([ALICE], ALICE.replace("alice", "Alice"))
    assert not allowed([ALICE], ALICE + "2")
    assert not allowed([ALICE + "2"], ALICE)


def test_wildcards_star_and_question_mark() -> None:
    # Given patterns with * (any run, / included) and ? (one character)
    assert allowed([f"arn:aws:iam::{ACCOUNT}:user/*"], ALICE)
    assert allowed([f"arn:aws:iam::{ACCOUNT}:user/al?ce"], ALICE)
    assert not allowed([f"arn:aws:iam::{ACCOUNT}:user/al?e"], ALICE)
    assert allowed([f"arn:aws:iam::{ACCOUNT}:user/*"], f"arn:aws:iam::{ACCOUNT}:user/team/alice")
    # Then a regex or glob character class in an ARN means itself (and is refused at load anyway)
    assert not matches(f"arn:aws:iam::{ACCOUNT}:user/.*", Caller(ALICE))


def test_a_wildcard_account_matches_every_account() -> None:
    # Given a pattern for alice in any account
    patterns = ["arn:aws:iam::*:user/alice"]
    # Then alice of two accounts may; a user of another name may not
    assert allowed(patterns, ALICE) and allowed(patterns, "arn:aws:iam::210987654321:user/alice")
    assert not allowed(patterns, MALLORY)


def test_a_role_session_matches_the_role_arn_and_the_session_form() -> None:
    # Given the caller is a session of the role `deployer` (what API Gateway reports for
    # AssumeRole credentials), When the list names the role, its sessions, or another role
    # Then the role's ARN and the session patterns match; another role or a user pattern does not
    assert allowed([f"arn:aws:iam::{ACCOUNT}:role/deployer"], DEPLOYER_SESSION)
    assert allowed([f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/*"], DEPLOYER_SESSION)
    assert allowed([DEPLOYER_SESSION], DEPLOYER_SESSION)
    assert not allowed([f"arn:aws:iam::{ACCOUNT}:role/deployer2"], DEPLOYER_SESSION)
    assert not allowed([f"arn:aws:iam::{ACCOUNT}:user/deployer"], DEPLOYER_SESSION)
    assert not allowed([f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/other-session"], DEPLOYER_SESSION)


def test_a_role_with_a_path_is_named_with_a_wildcard() -> None:
    # Given the role /team/deployer: its session ARN does not carry the path
    # Then the exact role ARN with the path cannot match, `role/*deployer` does
    assert not allowed([f"arn:aws:iam::{ACCOUNT}:role/team/deployer"], DEPLOYER_SESSION)
    assert allowed([f"arn:aws:iam::{ACCOUNT}:role/*deployer"], DEPLOYER_SESSION)
    assert Caller(DEPLOYER_SESSION).names() == (DEPLOYER_SESSION, f"arn:aws:iam::{ACCOUNT}:role/deployer")


def test_the_role_form_keeps_the_partition() -> None:
    session = f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/deployer/s"
    assert allowed([f"arn:aws-cn:iam::{ACCOUNT}:role/deployer"], session)
    assert not allowed([f"arn:aws:iam::{ACCOUNT}:role/deployer"], session)


def test_a_request_without_an_identity_is_refused_when_there_is_a_list() -> None:
    # Given an unsigned request (no caller ARN), When it triggers a pipeline with a list, even `*`-wide
    # Then it is refused, the message saying it carried no identity
    with pytest.raises(NotAllowed) as err:
        authorize_trigger(pipeline(["arn:aws:iam::*:*"]), Caller(None))
    assert err.value.principal is None and "without an IAM identity" in str(err.value)


def test_an_empty_list_refuses_everybody() -> None:
    # Given allowed_principals: [] (HTTP triggers off; S3 and schedules still run)
    assert not allowed([], ALICE) and not allowed([], DEPLOYER_SESSION) and not allowed([], None)


def test_no_list_lets_every_caller_through() -> None:
    # Given no allowed_principals (the default: IAM alone decides who calls the API)
    assert pipeline(None).allowed_principals is None
    # Then any principal, and a request without an identity, may trigger it
    assert allowed(None, ALICE) and allowed(None, MALLORY) and allowed(None, None)


def test_a_cancel_refusal_names_the_job() -> None:
    with pytest.raises(NotAllowed) as err:
        authorize_trigger(pipeline([ALICE]), Caller(MALLORY), job_id="sales-summary-20260101-020000-1a2b3c4d")
    assert err.value.job_id == "sales-summary-20260101-020000-1a2b3c4d"
    assert "cancel job sales-summary-20260101-020000-1a2b3c4d of pipeline 'sales-summary'" in str(err.value)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "good",
    [
        ALICE,
        f"arn:aws:iam::{ACCOUNT}:root",
        f"arn:aws:iam::{ACCOUNT}:role/service-role/deployer",
        "arn:aws:iam::*:role/*deployer",
        f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/*",
        "arn:aws-us-gov:iam::123456789012:user/a.b+c=d,e@f_g-h",
    ],
)
def test_good_patterns_load(good: str) -> None:
    assert pipeline([good]).allowed_principals == (good,)


@pytest.mark.parametrize(
    "bad",
    [
        "alice",
        "*",
        "arn:aws:iam::1234:user/alice",  # not 12 digits
        "arn:aws:iam::12345678901?:user/alice",  # the account is 12 digits or *, no other wildcard
        "arn:aws:s3:::bucket",  # not a principal
        "arn:aws:iam::123456789012:",  # no resource
        "arn:aws:iam::123456789012:user/a b",  # whitespace
        "arn:aws:iam::123456789012:user/[ab]",  # glob classes are not wildcards here
    ],
)
def test_a_bad_pattern_fails_the_load_naming_its_path(bad: str) -> None:
    # Given a second pattern that is not an IAM principal ARN pattern
    data = {"name": "sales-summary", "trigger": {"prefix": "incoming/sales/"},
            "entrypoint": {"script": "jobs/sales_summary/main.py"}, "output_prefix": "outputs/sales-summary/",
            "allowed_principals": [ALICE, bad]}  # fmt: skip
    # When the config is loaded, Then the error names the field and the item, and what to write
    with pytest.raises(ConfigError) as err:
        parse_pipelines({"pipelines": [data]}, "test.yaml")
    assert "  pipelines.0.allowed_principals.1: " in str(err.value)
    assert "is not an IAM principal ARN pattern" in str(err.value) and "test.yaml" in str(err.value)


def test_a_single_string_is_not_a_list() -> None:
    with pytest.raises(ConfigError, match=r"pipelines\.0\.allowed_principals:"):
        parse_pipelines({"pipelines": [{"name": "sales-summary", "trigger": {"prefix": "incoming/sales/"},
                                        "entrypoint": {"script": "jobs/sales_summary/main.py"},
                                        "output_prefix": "outputs/", "allowed_principals": ALICE}]})  # fmt: skip


def test_the_list_survives_the_json_export() -> None:
    # Given a config with a list, When exported as JSON (what the Lambdas read) and read back, Then equal
    config = parse_pipelines({"pipelines": [pipeline([ALICE, "arn:aws:iam::*:role/*ops"]).model_dump()]})
    assert parse_pipelines(json.loads(pipelines_json(config))) == config
