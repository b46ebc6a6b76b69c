"""Which processes, temp dirs and stand-ins count as ours: the checkout, narrowed by a scope
(each parallel test worker has its own), widened again when no scope is set (the check that
runs after the whole test run)."""

from __future__ import annotations

import pytest

from raylauncher.clusters.processes import CHECKOUT, SCOPE_ENV, checkout_id, is_ours, marker_env


def test_a_scoped_run_owns_its_own_scope_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run in scope gw1
    monkeypatch.setenv(SCOPE_ENV, "gw1-42")
    # Then what it launches carries the scope, and only that scope is ours
    assert checkout_id() == f"{CHECKOUT}#gw1-42"
    assert marker_env("job-1")["RAYLAUNCHER_CHECKOUT"] == f"{CHECKOUT}#gw1-42"
    assert is_ours(f"{CHECKOUT}#gw1-42")
    assert not is_ours(f"{CHECKOUT}#gw2-43")  # another worker's
    assert not is_ours(CHECKOUT)  # a run without a scope (a developer's serve, the demo)
    assert not is_ours("/elsewhere/raylauncher#gw1-42") and not is_ours(None)


def test_an_unscoped_run_owns_every_scope_of_its_checkout_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the check after the whole test run (no scope)
    monkeypatch.delenv(SCOPE_ENV, raising=False)
    # Then every worker's leftovers count, another checkout's never
    assert checkout_id() == CHECKOUT
    assert is_ours(CHECKOUT) and is_ours(f"{CHECKOUT}#gw0-1") and is_ours(f"{CHECKOUT}#gw2-3")
    assert not is_ours("/elsewhere/raylauncher") and not is_ours("/elsewhere/raylauncher#gw0-1")
    assert not is_ours(CHECKOUT + "-other")  # a checkout whose path merely starts like ours
