"""The driver: one job attempt on the bastion (core), its Jobs-API client with deadlines
(jobs_client), its lease (lease), the signal guard (signals) and outcomes (outcome)."""

from raylauncher.driver.core import Driver
from raylauncher.driver.logs import logs_key_of, session_logs_key_of
from raylauncher.driver.jobs_client import JobsClient, TimedJobsClient
from raylauncher.driver.lease import JobTakenOver, Lease
from raylauncher.driver.outcome import Outcome, clip, plain
from raylauncher.driver.signals import DriverTerminated, SignalGuard

__all__ = [
    "Driver", "DriverTerminated", "JobTakenOver", "JobsClient", "Lease", "Outcome", "SignalGuard",
    "TimedJobsClient", "clip", "logs_key_of", "plain", "session_logs_key_of",
]  # fmt: skip
