"""Turns moto's instances into nodes: every pending/running instance of the stand-in's VPC
becomes a Node at its private IP; a node whose instance is shutting down, terminated,
stopping or stopped (or gone) is killed and its namespace deleted.

When it looks: right after each call that starts or ends instances (`wake()`, called by the moto
server's call log), and every FALLBACK_POLL_S besides; without a wake source, every POLL_S. Each
look lists only the instances that are not terminated: moto keeps terminated instances forever
(AWS for about an hour), and serializing a growing list five times a second was most of the CPU
a long-lived stand-in cost (measured: about a third of a test worker's)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylauncher.local.ec2_standin.imds import InstanceMetadata
from raylauncher.local.ec2_standin.network import Bridge
from raylauncher.local.ec2_standin.node import Node, NodeImage

log = logging.getLogger(__name__)

RUNNING_STATES = ("pending", "running")
#: Every state but "terminated": what one look lists.
LISTED_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
POLL_S = 0.2
FALLBACK_POLL_S = 2.0


@dataclass(frozen=True)
class InstanceEvent:
    """One change of an instance as the stand-in saw it (for the demo's display and the bench)."""

    at: float  # time.time()
    instance_id: str
    state: str
    address: str
    tags: dict[str, str] = field(default_factory=dict)


class Materializer:
    def __init__(
        self,
        ec2: Any,
        vpc_id: str,
        bridge: Bridge,
        image: NodeImage,
        public_key: str,
        host_key: Path,
        nodes_dir: Path,
        standin_id: str,
        refuse_ssh: Callable[[dict[str, str]], bool] = lambda tags: False,
        woken: bool = False,
        metadata_of: Callable[[dict[str, Any]], InstanceMetadata | None] = lambda instance: None,
    ) -> None:
        """`metadata_of(instance)`: what the instance's metadata service answers (moto's
        description of the instance in, None: no metadata service)."""
        self._ec2 = ec2
        self._vpc_id = vpc_id
        self._bridge = bridge
        self._image = image
        self._public_key = public_key
        self._host_key = host_key
        self._nodes_dir = nodes_dir
        self._standin_id = standin_id
        self.refuse_ssh = refuse_ssh  # fault injection: nodes whose tags match get no sshd
        self._metadata_of = metadata_of
        self.nodes: dict[str, Node] = {}
        self.events: list[InstanceEvent] = []
        self._last: dict[str, InstanceEvent] = {}  # each instance as last seen (state, address, tags)
        self._listeners: list[Callable[[InstanceEvent], None]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._poll_s = FALLBACK_POLL_S if woken else POLL_S
        self._thread = threading.Thread(target=self._run, name="standin-materializer", daemon=True)
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[InstanceEvent], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look now: an instance was started, stopped or terminated (called from moto's side)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._lock:
            for node in list(self.nodes.values()):
                node.stop()
            self.nodes.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the look: a wake during it means one more look
            if self._stop.is_set():
                break
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a failed poll is retried on the next one
                log.exception("stand-in: materializer poll failed")
            self._wake.wait(self._poll_s)

    def instances(self, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The VPC's instances (terminated ones too unless `states` narrows them)."""
        filters = [{"Name": "vpc-id", "Values": [self._vpc_id]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        pages = self._ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def sync(self) -> None:
        """One poll: create nodes for new running instances, kill nodes of ended ones."""
        with self._lock:
            seen = set()
            for instance in self.instances(LISTED_STATES):
                iid, state = instance["InstanceId"], instance["State"]["Name"]
                address = instance.get("PrivateIpAddress", "")
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                seen.add(iid)
                if state in RUNNING_STATES and iid not in self.nodes and iid not in self._last:
                    self._create(instance, tags)
                elif state not in RUNNING_STATES and iid in self.nodes:
                    self._remove(iid)
                last = self._last.get(iid)
                if last is None or last.state != state:
                    self._emit(InstanceEvent(time.time(), iid, state, address, tags))
            for iid in [i for i in self.nodes if i not in seen]:
                self._remove(iid)
            for last in [e for i, e in self._last.items() if i not in seen and e.state != "terminated"]:
                # not listed any more: terminated (or gone)
                self._emit(InstanceEvent(time.time(), last.instance_id, "terminated", last.address, last.tags))

    def _remove(self, instance_id: str) -> None:
        """Stop the node, then forget it: `nodes` lists a node until its namespace is gone."""
        self.nodes[instance_id].stop()
        del self.nodes[instance_id]

    def _create(self, instance: dict[str, Any], tags: dict[str, str]) -> None:
        instance_id, address = instance["InstanceId"], instance.get("PrivateIpAddress", "")
        node = Node(self._bridge, instance_id, address, self._nodes_dir / instance_id)
        try:
            node.start(self._image, "" if self.refuse_ssh(tags) else self._public_key, self._host_key,
                       self._standin_id, sshd=not self.refuse_ssh(tags),
                       metadata=self._metadata_of(instance))  # fmt: skip
        except Exception:  # noqa: BLE001 - the instance stays unreachable, as a broken boot would
            log.exception("stand-in: could not materialize %s at %s", instance_id, address)
            node.stop()
            return
        self.nodes[instance_id] = node
        log.info("stand-in: %s is up at %s", instance_id, address)

    def _emit(self, event: InstanceEvent) -> None:
        self._last[event.instance_id] = event
        self.events.append(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001
                log.exception("stand-in: instance listener failed")
