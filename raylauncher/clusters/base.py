"""The cluster-backend port. Local: `ray start --head --block`; EC2: `ray up` / `ray down`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from raylauncher.config import Pipeline
from raylauncher.model import Job


@dataclass(frozen=True)
class ClusterHandle:
    """A cluster that is up: where its Jobs API is and how entrypoints must be run on it."""

    name: str
    dashboard_url: str  # the Ray Jobs API / dashboard, e.g. http://10.0.1.23:8265
    python: str  # the interpreter an entrypoint runs with on the head node
    job_env: dict[str, str] = field(default_factory=dict)  # env vars for the Ray job
    details: dict[str, Any] = field(default_factory=dict)  # stored on the job record, to find it again


class ClusterBackend(ABC):
    @abstractmethod
    def up(self, job: Job, pipeline: Pipeline, timeout_s: float) -> ClusterHandle:
        """Bring the job's cluster up and wait until its Jobs API answers.

        Raises ProvisioningFailed (with what the launcher said) if it does not come up in time.
        Whatever happens, `down(job)` afterwards removes whatever was started.
        """

    @abstractmethod
    def down(self, job: Job) -> None:
        """Remove everything `up` started for this job, and check it is gone.

        Safe to call when `up` failed half-way or never ran. Raises TeardownFailed if the
        cluster cannot be verified gone.
        """
