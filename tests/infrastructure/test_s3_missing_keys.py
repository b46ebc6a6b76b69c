"""S3's rule for keys that do not exist yet, evaluated on the synthesized template (moto never
applies it): a GET/HEAD of a missing key answers 404 only to a caller allowed s3:ListBucket in
that request's context, which carries no s3:prefix; anyone else gets 403. Ray Data and pyarrow
look at an output path before writing it (HeadObject) and fail on 403; the API answers "no log
yet" on 404. So every role that reads or writes keys that may not exist must get 404 there, and
listing must still stay inside each role's prefixes."""

from __future__ import annotations

from typing import Any

import pytest

from cdk.storage import JOB_PREFIX
from tests.iam_contract import as_list, stack_documents
from tests.iam_eval import ALLOWED, IMPLICIT_DENY, evaluate, s3_missing_key_status
from tests.infrastructure.conftest import Synthesized, render

pytestmark = pytest.mark.xdist_group("cdk-synth")


def bucket_arn(s: Synthesized) -> str:
    return render(s.resolve(s.stack.storage.bucket_arn))


def prefixes_with(s: Synthesized, role: str, action: str) -> list[str]:
    """The prefixes (`<bucket>/<prefix>*` resources) on which the role is granted `action`."""
    bucket = bucket_arn(s) + "/"
    found = []
    for document in stack_documents(s.template_json, role):
        for statement in as_list(document["Statement"]):
            if statement["Effect"] == "Allow" and action in as_list(statement.get("Action", [])):
                found += [r[len(bucket):-1] for r in map(render, as_list(statement["Resource"]))
                          if r.startswith(bucket) and r.endswith("*")]  # fmt: skip
    return sorted(set(found))


def roles(s: Synthesized) -> dict[str, str]:
    stack = s.stack
    return {"nodes": s.logical_id(stack.nodes.role), "bastion": s.logical_id(stack.bastion.role),
            "api": s.logical_id(stack.api.function.role)}  # fmt: skip


@pytest.mark.parametrize("who", ["nodes", "bastion", "api"])
def test_every_key_a_role_may_read_or_write_answers_404_while_it_does_not_exist(default_stack: Synthesized, who: str) -> None:
    # Given a role of the stack and every prefix it may read or write objects under
    role = roles(default_stack)[who]
    documents = stack_documents(default_stack.template_json, role)
    prefixes = prefixes_with(default_stack, role, "s3:GetObject")
    assert prefixes, f"{who} reads nothing?"
    written = prefixes_with(default_stack, role, "s3:PutObject")
    # (a role that writes a prefix also reads it: Ray Data looks before it writes)
    assert set(written) <= set(prefixes), f"{who} writes where it may not look: {set(written) - set(prefixes)}"
    # When it asks for a key there that does not exist yet
    statuses = {p: s3_missing_key_status(documents, bucket_arn(default_stack), f"{p}not-yet/part-0.parquet", render)
                for p in prefixes}  # fmt: skip
    # Then S3 answers 404, not 403
    assert statuses == dict.fromkeys(prefixes, 404)


@pytest.mark.parametrize("who", ["nodes", "bastion", "api"])
def test_listing_stays_inside_the_roles_prefixes(default_stack: Synthesized, who: str) -> None:
    role = roles(default_stack)[who]
    documents = stack_documents(default_stack.template_json, role)
    bucket = bucket_arn(default_stack)

    def listing(prefix: str) -> str:
        return evaluate(documents, "s3:ListBucket", bucket, {"s3:prefix": prefix}, render)

    # Given the prefixes it may read: listing under each is allowed ...
    for prefix in prefixes_with(default_stack, role, "s3:GetObject"):
        assert listing(prefix) == ALLOWED, prefix
    # ... and listing anywhere else is not
    assert listing("elsewhere/") == IMPLICIT_DENY
    assert listing("") == IMPLICIT_DENY
    # (a listing with no prefix at all carries no s3:prefix, like the missing-key check: allowed,
    # key names only; the price of answering 404, said in docs/architecture.md)
    assert evaluate(documents, "s3:ListBucket", bucket, {}, render) == ALLOWED
    if who == "api":
        assert listing(JOB_PREFIX) == ALLOWED

