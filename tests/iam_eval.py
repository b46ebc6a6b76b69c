"""IAM policy evaluation as AWS does it, for the synthesized template's identity policies: one
request (action, resource ARN, request context keys) against a role's documents.

Allow and Deny statements, Action/NotAction and Resource/NotResource with IAM's wildcards (case-
insensitive actions), and the condition operators the stack uses, each with its `IfExists` form
and AWS's rule for a key the request does not carry: it matches nothing (the statement does not
apply), except under `...IfExists` (it applies) and the negated operators (they apply). `Null`
tests presence. Condition values that are template references are rendered like resources. An
operator or a policy variable this module does not know raises: an evaluator that silently
treated it as "matches" would be kinder than AWS.

Not modelled (not used by the stack's roles): permission boundaries, SCPs, resource policies,
session policies, `ForAnyValue`/`ForAllValues` set operators, numeric and date operators.
The references of a template (Ref, Fn::Join ...) are rendered by tests.infrastructure.conftest.render.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ALLOWED, IMPLICIT_DENY, EXPLICIT_DENY = "Allowed", "ImplicitlyDenied", "ExplicitlyDenied"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    """IAM's `*` and `?` (no character classes: `[` is literal)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


_OPERATORS: dict[str, tuple[Callable[[str, str], bool], bool]] = {  # name -> (test, negated)
    "StringEquals": (lambda want, got: want == got, False),
    "StringNotEquals": (lambda want, got: want == got, True),
    "StringEqualsIgnoreCase": (lambda want, got: want.lower() == got.lower(), False),
    "StringLike": (lambda want, got: _wildcard(want, got), False),
    "StringNotLike": (lambda want, got: _wildcard(want, got), True),
    "ArnEquals": (lambda want, got: _wildcard(want, got), False),  # AWS: the same as ArnLike
    "ArnLike": (lambda want, got: _wildcard(want, got), False),
    "ArnNotLike": (lambda want, got: _wildcard(want, got), True),
    "Bool": (lambda want, got: want.lower() == got.lower(), False),
}


def _condition_holds(operator: str, key: str, wanted: list[str], context: Mapping[str, Any]) -> bool:
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    present = key in context
    if base == "Null":
        return any((str(w).lower() == "true") == (not present) for w in wanted)
    if base not in _OPERATORS:
        raise NotImplementedError(f"condition operator {operator} is not modelled: teach tests/iam_eval.py")
    test, negated = _OPERATORS[base]
    if not present:
        return if_exists or negated
    values = [str(v) for v in _as_list(context[key])]
    hit = any(test(str(w), v) for w in wanted for v in values)
    return not hit if negated else hit


def _value(wanted: Any, render: Callable[[Any], str]) -> str:
    text = render(wanted) if isinstance(wanted, dict) else str(wanted)
    if "${" in text:
        raise NotImplementedError(f"policy variable in {text!r} is not modelled: teach tests/iam_eval.py")
    return text


def _conditions_hold(
    conditions: Mapping[str, Mapping[str, Any]], context: Mapping[str, Any], render: Callable[[Any], str]
) -> bool:
    # Context keys are case-insensitive in IAM; callers pass them as AWS documents them.
    ctx = {k.lower(): v for k, v in context.items()}
    return all(
        _condition_holds(operator, key.lower(), [_value(w, render) for w in _as_list(wanted)], ctx)
        for operator, block in conditions.items()
        for key, wanted in block.items()
    )


def _matches(statement: Mapping[str, Any], action: str, resource: str, render: Callable[[Any], str]) -> bool:
    if "Action" in statement:
        action_ok = any(_wildcard(a, action, case_sensitive=False) for a in _as_list(statement["Action"]))
    else:
        action_ok = not any(_wildcard(a, action, case_sensitive=False) for a in _as_list(statement["NotAction"]))
    if not action_ok:
        return False
    if "Resource" in statement:
        return any(_wildcard(render(r), resource) for r in _as_list(statement["Resource"]))
    return not any(_wildcard(render(r), resource) for r in _as_list(statement["NotResource"]))


def evaluate(
    documents: Iterable[Mapping[str, Any]], action: str, resource: str, context: Mapping[str, Any],
    render: Callable[[Any], str],
) -> str:  # fmt: skip
    """ALLOWED, IMPLICIT_DENY or EXPLICIT_DENY for one request against identity policies."""
    allowed = False
    for document in documents:
        for statement in _as_list(document["Statement"]):
            if not _matches(statement, action, resource, render):
                continue
            if not _conditions_hold(statement.get("Condition", {}), context, render):
                continue
            if statement["Effect"] == "Deny":
                return EXPLICIT_DENY
            allowed = True
    return ALLOWED if allowed else IMPLICIT_DENY


def s3_missing_key_status(
    documents: Iterable[Mapping[str, Any]], bucket_arn: str, key: str, render: Callable[[Any], str]
) -> int:
    """What S3 answers a GET/HEAD of a key that does not exist: 404 to a caller allowed
    s3:ListBucket on the bucket in that request's context (which carries no s3:prefix), else 403.
    A caller not even allowed s3:GetObject gets 403 too."""
    docs = list(documents)
    if evaluate(docs, "s3:GetObject", f"{bucket_arn}/{key}", {}, render) != ALLOWED:
        return 403
    return 404 if evaluate(docs, "s3:ListBucket", bucket_arn, {}, render) == ALLOWED else 403

