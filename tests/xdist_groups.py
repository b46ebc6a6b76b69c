"""`xdist_group` groups kept together under pytest-xdist's `--dist loadgroup` (tests/conftest.py
imports the hook)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep `xdist_group` groups together (`--dist loadgroup`). pytest-xdist marks a grouped
    test by appending "@group" to its nodeid, in each worker, by setting `item._nodeid`; since
    pytest 9.2 a nodeid is made from `item._id` and that assignment does nothing: every test
    became a unit of its own, and each worker that ran any test of a module built the module's
    fixtures again (stand-ins, CDK synths, Ray heads). Here the suffix is set where pytest now
    reads it. tests/unit/test_xdist_groups.py fails if grouped tests run apart again."""
    if not getattr(config.option, "loadgroup", False):  # set in xdist workers only
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})  # fmt: skip
        if not names or item.nodeid.rfind("@") > item.nodeid.rfind("]"):
            continue  # not grouped, or xdist's own suffix took effect (older pytest)
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")  # type: ignore[attr-defined]
