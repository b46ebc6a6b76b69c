"""How `make test` hands tests to its parallel workers (pytest-xdist's `--dist loadgroup`, plus
one rule): at most `--cluster-slots` work units of tests/e2e/ (each starts Ray clusters or an
EC2 stand-in: bursts of several cores, then a long wait) run at once; the other workers run the
light tests meanwhile. Heavy units go out largest first, so the longest chains start early.

Why: the suite is bound by the machine's CPU once it runs in parallel (2 cores here). Four
workers all starting Ray clusters at once left every one of them starved; two or three at once
beside light tests keep both cores busy without making the clusters' own deadlines race.

xdist runs a worker's last test only once it knows the next one (or is told to stop), so a
worker is never left with a single pending test: when no light unit is left to give it, it
gets the next heavy unit even past the limit (only near the end of the run). A worker with
nothing pending waits for a free slot instead."""

from __future__ import annotations

from typing import Any

from xdist.scheduler.loadgroup import LoadGroupScheduling

HEAVY_PREFIX = "tests/e2e/"


def is_heavy(scope: str, work_unit: dict[str, bool]) -> bool:
    return any(nodeid.startswith(HEAVY_PREFIX) for nodeid in work_unit) or scope.startswith(HEAVY_PREFIX)


class ClusterSlotsScheduling(LoadGroupScheduling):
    def __init__(self, config: Any, log: Any = None, slots: int = 3) -> None:
        super().__init__(config, log)
        self.slots = slots

    def _heavy_active(self) -> int:
        return sum(1 for work in self.assigned_work.values() for scope, unit in work.items()
                   if not all(unit.values()) and is_heavy(scope, unit))  # fmt: skip

    def _pick(self, force: bool) -> str | None:
        heavy = [s for s, unit in self.workqueue.items() if is_heavy(s, unit)]
        light = [s for s, unit in self.workqueue.items() if not is_heavy(s, unit)]
        if heavy and self._heavy_active() < self.slots:
            return max(heavy, key=lambda s: len(self.workqueue[s]))
        if light:
            return light[0]
        return heavy[0] if (heavy and force) else None

    def _assign_work_unit(self, node: Any) -> None:
        # A worker holding one pending test would not run it: it gets work even past the limit.
        scope = self._pick(force=self._pending_of(self.assigned_work[node]) == 1)
        if scope is None:
            return  # idle until a heavy unit completes: every worker is looked at again then
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        node.send_runtest_some([collection.index(nodeid) for nodeid, done in work_unit.items() if not done])

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        nodeid = self.registered_collections[node][item_index]
        scope = self._split_scope(nodeid)
        unit = self.assigned_work[node][scope]
        unit[nodeid] = True
        if all(unit.values()) and is_heavy(scope, unit):
            for other in list(self.assigned_work):  # a heavy slot is free: whoever waits may take it
                self._reschedule(other)
        else:
            self._reschedule(node)
