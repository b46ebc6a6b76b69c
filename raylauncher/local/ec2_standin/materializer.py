"""Turns moto's instances into nodes: every pending/running instance of the stand-in's VPC
becomes a Node at its private IP; a node whose instance is shutting down, terminated,
stopping or stopped (or gone) is killed and its namespace deleted. Polls moto every 0.2 s."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylauncher.local.ec2_standin.network import Bridge
from raylauncher.local.ec2_standin.node import Node, NodeImage

log = logging.getLogger(__name__)

RUNNING_STATES = ("pending", "running")
POLL_S = 0.2


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
    ) -> None:
        self._ec2 = ec2
        self._vpc_id = vpc_id
        self._bridge = bridge
        self._image = image
        self._public_key = public_key
        self._host_key = host_key
        self._nodes_dir = nodes_dir
        self._standin_id = standin_id
        self.refuse_ssh = refuse_ssh  # fault injection: nodes whose tags match get no sshd
        self.nodes: dict[str, Node] = {}
        self.events: list[InstanceEvent] = []
        self._states: dict[str, str] = {}
        self._listeners: list[Callable[[InstanceEvent], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standin-materializer", daemon=True)
        self._lock = threading.Lock()

    def subscribe(self, listener: Callable[[InstanceEvent], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._lock:
            for node in list(self.nodes.values()):
                node.stop()
            self.nodes.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a failed poll is retried on the next one
                log.exception("stand-in: materializer poll failed")
            self._stop.wait(POLL_S)

    def instances(self) -> list[dict[str, Any]]:
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "vpc-id", "Values": [self._vpc_id]}]
        )
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def sync(self) -> None:
        """One poll: create nodes for new running instances, kill nodes of ended ones."""
        with self._lock:
            seen = set()
            for instance in self.instances():
                iid, state = instance["InstanceId"], instance["State"]["Name"]
                address = instance.get("PrivateIpAddress", "")
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                seen.add(iid)
                if state in RUNNING_STATES and iid not in self.nodes and self._states.get(iid) is None:
                    self._create(iid, address, tags)
                elif state not in RUNNING_STATES and iid in self.nodes:
                    self._remove(iid)
                if self._states.get(iid) != state:
                    self._states[iid] = state
                    self._emit(InstanceEvent(time.time(), iid, state, address, tags))
            for iid in [i for i in self.nodes if i not in seen]:
                self._remove(iid)

    def _remove(self, instance_id: str) -> None:
        """Stop the node, then forget it: `nodes` lists a node until its namespace is gone."""
        self.nodes[instance_id].stop()
        del self.nodes[instance_id]

    def _create(self, instance_id: str, address: str, tags: dict[str, str]) -> None:
        node = Node(self._bridge, instance_id, address, self._nodes_dir / instance_id)
        try:
            node.start(self._image, "" if self.refuse_ssh(tags) else self._public_key, self._host_key,
                       self._standin_id, sshd=not self.refuse_ssh(tags))  # fmt: skip
        except Exception:  # noqa: BLE001 - the instance stays unreachable, as a broken boot would
            log.exception("stand-in: could not materialize %s at %s", instance_id, address)
            node.stop()
            return
        self.nodes[instance_id] = node
        log.info("stand-in: %s is up at %s", instance_id, address)

    def _emit(self, event: InstanceEvent) -> None:
        self.events.append(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001
                log.exception("stand-in: instance listener failed")
