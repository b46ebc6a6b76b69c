"""How `make test` hands tests to its parallel workers (pytest-xdist's `--dist loadgroup`, plus
one rule): at most `--cluster-slots` work units of tests/e2e/ (each starts Ray clusters or an
EC2 stand-in: bursts of several cores, then a long wait) run at once; the other workers run the
light tests meanwhile. Heavy units go out largest first, so the longest chains start early.

Why: the suite is bound by the machine's CPU once it runs in parallel (2 cores here). Four
workers all starting Ray clusters at once left every one of them starved; two or three at once
beside light tests keep both cores busy without making the clusters' own deadlines race.

A worker that runs heavy units takes the next heavy unit itself (no more at once than before).
Once the light units are all handed out, the limit is lifted: nothing is left to share the
cores with. xdist runs a worker's last test only once it knows the next one (or is told to
stop): a worker left with one test and nothing it may take is told to stop; a worker with
nothing pending waits for a free slot."""

from __future__ import annotations

from typing import Any

from xdist.scheduler.loadgroup import LoadGroupScheduling

HEAVY_PREFIX = "tests/e2e/"
STANDIN = "tests/e2e/test_ec2_standin.py"


def is_heavy(work_unit: dict[str, bool]) -> bool:
    return any(nodeid.startswith(HEAVY_PREFIX) for nodeid in work_unit)


def _weight(work_unit: dict[str, bool]) -> tuple[bool, int]:
    """Stand-in groups first (the longest chains), then by number of tests."""
    return any(STANDIN in nodeid for nodeid in work_unit), len(work_unit)


class ClusterSlotsScheduling(LoadGroupScheduling):
    def __init__(self, config: Any, log: Any = None, slots: int = 3) -> None:
        super().__init__(config, log)
        self.slots = slots

    def _heavy_workers(self) -> set[Any]:
        return {node for node, work in self.assigned_work.items()
                if any(is_heavy(unit) and not all(unit.values()) for unit in work.values())}  # fmt: skip

    def _pick(self, node: Any) -> str | None:
        heavy = [s for s, unit in self.workqueue.items() if is_heavy(unit)]
        light = [s for s, unit in self.workqueue.items() if not is_heavy(unit)]
        running_heavy = self._heavy_workers()
        # Once no light unit is left to run beside them, every worker may take heavy units.
        limit = self.slots if light else len(self.assigned_work)
        # A worker already on heavy units runs the next one after it: no more at once than now.
        if heavy and (node in running_heavy or len(running_heavy) < limit):
            return max(heavy, key=lambda s: _weight(self.workqueue[s]))
        return light[0] if light else None

    def _assign_work_unit(self, node: Any) -> None:
        scope = self._pick(node)
        if scope is None:
            if self._pending_of(self.assigned_work[node]) == 1 and self._heavy_workers() - {node}:
                # Its last light test would wait forever for a next one: let it finish and leave;
                # the workers on heavy units take what is left.
                node.shutdown()
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
        if all(unit.values()) and is_heavy(unit):
            for other in [node, *(n for n in self.assigned_work if n is not node)]:  # a slot may be free
                self._reschedule(other)
        else:
            self._reschedule(node)
