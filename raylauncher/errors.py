"""Domain exceptions. Adapters turn AWS error *codes* into these; callers branch on the type."""

from __future__ import annotations


class RayLauncherError(Exception):
    """Base of every error this product raises on purpose."""


class ConfigError(RayLauncherError):
    """A pipeline config or a setting is invalid; the message names the bad field's path."""


class InvalidParams(RayLauncherError):
    """A run's params do not match the pipeline's declaration; `field` names the one at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"params.{field}: {reason}")
        self.field = field
        self.reason = reason


class NoInputObjects(InvalidParams):
    """An API call or schedule names a prefix under which nothing matches the pipeline's trigger:
    refused before anything is written, so no cluster is started for an empty manifest."""

    def __init__(self, field: str, prefix: str, suffix: str) -> None:
        matching = f" ending in {suffix!r}" if suffix else ""
        super().__init__(field, f"no input objects{matching} under {prefix!r}: nothing to run")
        self.prefix = prefix


class InvalidQuery(RayLauncherError):
    """A read's parameter is well-formed but unusable (e.g. `since`, a log `offset`); `field`
    names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownPipeline(RayLauncherError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no pipeline named {name!r}")
        self.name = name


class PipelineNotFound(RayLauncherError):
    """A read names a pipeline the config does not have (unlike UnknownPipeline, which is a
    submission's invalid input)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no pipeline named {name!r}")
        self.name = name


class InvalidJobId(RayLauncherError):
    def __init__(self, value: str) -> None:
        super().__init__(f"invalid job id {value!r}: expected lowercase letters, digits and '-'")
        self.value = value


class IllegalTransition(RayLauncherError):
    """The transition table forbids this move."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"transition {current} -> {target} is not allowed")
        self.current = current
        self.target = target


class JobNotFound(RayLauncherError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobAlreadyExists(RayLauncherError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} already exists")
        self.job_id = job_id


class TransitionConflict(RayLauncherError):
    """Somebody else changed the job first (the conditional update failed)."""

    def __init__(self, job_id: str, expected: str, actual: str | None) -> None:
        super().__init__(f"job {job_id}: expected status {expected}, found {actual}")
        self.job_id = job_id
        self.expected = expected
        self.actual = actual


class TransactionRefused(RayLauncherError):
    """A transaction's other items failed their conditions (e.g. no free cluster slot)."""

    def __init__(self, failed_items: list[int]) -> None:
        super().__init__(f"transaction refused by item(s) {failed_items}")
        self.failed_items = failed_items


class PoisonMessage(RayLauncherError):
    """An intake message that can never be processed as it is (it is retried, then dead-lettered)."""


class BastionUnavailable(RayLauncherError):
    """The bastion could not be asked to run the driver. `code` is the AWS error code, if any."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class StorageError(RayLauncherError):
    """The job store or the object store failed for a reason other than the ones above."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ProvisioningFailed(RayLauncherError):
    """The cluster did not come up (the message carries the tail of what the launcher said)."""


class ProvisioningTimedOut(ProvisioningFailed):
    """The cluster was not up before the provisioning deadline; the launcher was stopped."""


class ProvisioningCancelled(ProvisioningFailed):
    """A cancel was requested while the cluster was coming up; the launcher was stopped."""


class TeardownFailed(RayLauncherError):
    """The cluster could not be verified gone after `attempts` tries."""

    def __init__(self, message: str, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class NotAllowed(RayLauncherError):
    """The caller is not on the pipeline's `allowed_principals` (raylauncher/authz.py): it may not
    start a run of it (or, with `job_id`, cancel that job of it). `principal` is None when the
    request carried no IAM identity."""

    def __init__(self, pipeline: str, principal: str | None, job_id: str | None = None) -> None:
        who = f"principal {principal}" if principal else "a request without an IAM identity (unsigned)"
        what = f"cancel job {job_id} of pipeline {pipeline!r}" if job_id else f"start a run of pipeline {pipeline!r}"
        super().__init__(
            f"{who} may not {what}: it is not on that pipeline's allowed_principals in pipelines.yaml; "
            "add the principal's ARN (or a pattern matching it) there and deploy, or call as a principal on the list"
        )
        self.pipeline = pipeline
        self.principal = principal
        self.job_id = job_id
