"""Pipeline config and runtime settings, each validated once, at load, with the bad field's path.

Pipelines come from YAML (people write it) or JSON (what the Lambdas ship: no PyYAML there).
Settings come from a mapping of environment variables handed in by the entry point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raylauncher.errors import ConfigError, InvalidParams, UnknownPipeline

NAME_PATTERN = r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$"
#: Prefixes the product writes to itself; a trigger there would start jobs from our own writes.
RESERVED_PREFIXES = ("jobs/",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_prefix(value: str) -> str:
    if value.startswith("/") or ".." in value.split("/") or not value.endswith("/"):
        raise ValueError("must be a bucket-relative prefix ending in '/', without '..' or a leading '/'")
    return value


class S3Trigger(_Strict):
    prefix: str = Field(min_length=2, description="bucket-relative, ends with '/'")
    suffix: str = ""

    _prefix = field_validator("prefix")(_check_prefix)

    def matches(self, key: str) -> bool:
        return key.startswith(self.prefix) and key.endswith(self.suffix)


class Entrypoint(_Strict):
    script: str = Field(description="a Python script under jobs/, relative to the project root")
    args: tuple[str, ...] = ()

    @field_validator("script")
    @classmethod
    def _under_jobs(cls, value: str) -> str:
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or path.parts[:1] != ("jobs",) or path.suffix != ".py":
            raise ValueError("must be a relative path to a .py file under jobs/, e.g. jobs/x/main.py")
        return value


INSTANCE_TYPE_PATTERN = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"


class ClusterProfile(_Strict):
    """The cluster a pipeline runs on. Defaults are the original walkthrough's."""

    head_instance_type: str = Field(default="m6i.xlarge", pattern=INSTANCE_TYPE_PATTERN)
    worker_instance_type: str = Field(default="m6i.2xlarge", pattern=INSTANCE_TYPE_PATTERN)
    min_workers: int = Field(default=4, ge=0)
    max_workers: int = Field(default=8, ge=0)
    # Explicit resources keep config validation offline (no EC2 call to look them up).
    head_cpus: int = Field(default=0, ge=0, description="0: the head does no data work")
    worker_cpus: int = Field(default=8, ge=1, description="vCPUs of one worker (m6i.2xlarge: 8)")
    spot_workers: bool = False
    idle_timeout_minutes: int = Field(default=5, ge=1)
    disk_gib: int = Field(default=100, ge=8)
    local_num_cpus: int = Field(default=2, ge=1, description="CPUs of the local single-node cluster")
    # Prices for the API's cost estimate (GET /jobs/{job_id} `cost.estimate_usd`); null: no estimate.
    head_usd_per_hour: float | None = Field(default=None, ge=0, description="price of the head instance, USD/hour")
    worker_usd_per_hour: float | None = Field(default=None, ge=0, description="price of one worker, USD/hour")

    @model_validator(mode="after")
    def _min_le_max(self) -> ClusterProfile:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        return self


ParamType = Literal["string", "integer", "number", "boolean", "s3_prefix"]
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "s3_prefix": (str,),
}  # fmt: skip


class ParamSpec(_Strict):
    """One parameter a pipeline accepts from an API call or a schedule.

    `s3_prefix`: a prefix under the pipeline's trigger prefix; the objects under it at submit
    time become the job's manifest.
    """

    type: ParamType = "string"
    required: bool = False
    default: Any = None
    description: str = ""
    max_length: int = Field(default=1024, ge=1, le=4096)


class Schedule(_Strict):
    """An EventBridge Scheduler schedule that starts the pipeline with these params."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,40}[a-z0-9]$")
    expression: str = Field(pattern=r"^(cron|rate)\(.+\)$", description="cron(...) or rate(...)")
    params: dict[str, Any] = Field(default_factory=dict)
    timezone: str = "UTC"


class RetryPolicy(_Strict):
    """Which failed attempts start another one, on a new cluster (see model.FAILURE_CLASS)."""

    max_attempts: int = Field(default=2, ge=1, le=10, description="1: never retry")
    backoff_s: float = Field(default=30, ge=0, le=3600, description="wait before the 2nd attempt")
    backoff_multiplier: float = Field(default=2, ge=1, le=10)
    max_backoff_s: float = Field(default=900, ge=0, le=24 * 3600)
    retry_application_failures: bool = Field(default=False, description="also RAY_JOB_FAILED / RUN_TIMEOUT")


#: An IAM principal ARN pattern: `*` (any run of characters, `/` included) and `?` (one) are the
#: only wildcards; the account is 12 digits or `*`. What API Gateway's IAM authorization reports
#: as the caller: `arn:aws:iam::<account>:user/<name>`, `...:root`, or for a role session
#: `arn:aws:sts::<account>:assumed-role/<role>/<session>` (raylauncher/authz.py matches those).
PRINCIPAL_PATTERN = re.compile(r"^arn:aws(-[a-z]+)*:(iam|sts)::(\d{12}|\*):[A-Za-z0-9+=,.@_/*?-]+$")


def _check_principal(value: str) -> str:
    if not PRINCIPAL_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an IAM principal ARN pattern: write arn:aws:iam::<12-digit account or *>:user/<name> "
            "(or role/<name>, root), or arn:aws:sts::<account or *>:assumed-role/<role>/<session>; wildcards: * and ?"
        )
    return value


PrincipalPattern = Annotated[str, AfterValidator(_check_principal)]


class Pipeline(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    trigger: S3Trigger
    entrypoint: Entrypoint
    cluster: ClusterProfile = ClusterProfile()
    run_timeout_s: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    max_concurrent_clusters: int = Field(default=1, ge=1)
    output_prefix: str
    params: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")], ParamSpec] = Field(default_factory=dict)
    schedules: tuple[Schedule, ...] = ()
    #: Burst coalescing: objects arriving within the window become one job of at most this many.
    max_objects_per_job: int = Field(default=1000, ge=1, le=100_000)
    batching_window_s: int = Field(default=30, ge=0, le=300)
    retry: RetryPolicy = RetryPolicy()
    #: Warm clusters (raylauncher/warm.py): after a job ends SUCCEEDED (or FAILED for an
    #: application reason) its cluster stays up this long for the pipeline's next job. 0: never.
    keep_warm_seconds: int = Field(default=0, ge=0, le=24 * 3600)
    #: Debug holds: a job that FAILED for an application reason keeps its cluster this long (or
    #: until `raylauncher jobs release JOB`). 0: never.
    keep_failed_cluster_seconds: int = Field(default=0, ge=0, le=7 * 24 * 3600)
    #: Who may start a run over the HTTP API (POST /jobs) and cancel its jobs, as IAM principal
    #: ARN patterns (raylauncher/authz.py). None (the default): every principal IAM lets call the
    #: API. Empty: nobody over HTTP (S3 and schedule triggers still run).
    allowed_principals: tuple[PrincipalPattern, ...] | None = Field(
        default=None,
        description="IAM principal ARN patterns (wildcards * and ?) allowed to start runs over the API and cancel "
        "them; null: every caller IAM lets call the API; []: nobody over HTTP",
    )

    _output = field_validator("output_prefix")(_check_prefix)

    @model_validator(mode="after")
    def _schedules_use_declared_params(self) -> Pipeline:
        for i, schedule in enumerate(self.schedules):
            try:
                self.validate_params(schedule.params)
            except InvalidParams as err:
                raise ValueError(f"schedules.{i}.params.{err.field}: {err.reason}") from None
        return self

    def validate_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The params of one run, checked against the declaration (defaults filled in).
        Raises InvalidParams naming the field at fault."""
        unknown = sorted(set(raw) - set(self.params))
        if unknown:
            raise InvalidParams(unknown[0], f"unknown parameter; this pipeline accepts {sorted(self.params) or 'none'}")
        clean: dict[str, Any] = {}
        for name, spec in self.params.items():
            if name not in raw or raw[name] is None:
                if spec.required:
                    raise InvalidParams(name, "required")
                if spec.default is not None:
                    clean[name] = spec.default
                continue
            value = raw[name]
            ok = isinstance(value, _PARAM_TYPES[spec.type]) and not (spec.type != "boolean" and isinstance(value, bool))
            if not ok:
                raise InvalidParams(name, f"must be of type {spec.type}")
            if isinstance(value, str) and len(value) > spec.max_length:
                raise InvalidParams(name, f"must be at most {spec.max_length} characters")
            if spec.type == "s3_prefix" and not (
                value.startswith(self.trigger.prefix) and ".." not in value.split("/")
            ):
                raise InvalidParams(name, f"must be a prefix under {self.trigger.prefix!r}")
            clean[name] = value
        return clean


class PipelinesConfig(_Strict):
    pipelines: tuple[Pipeline, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlaps(self) -> PipelinesConfig:
        names = [p.name for p in self.pipelines]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"pipelines.{i}.name: duplicate pipeline name {name!r}")
        written = [(f"pipelines.{i}.output_prefix", p.output_prefix) for i, p in enumerate(self.pipelines)]
        written += [("reserved", r) for r in RESERVED_PREFIXES]
        for i, p in enumerate(self.pipelines):
            trig = p.trigger.prefix
            for where, out in written:
                if trig.startswith(out) or out.startswith(trig):
                    raise ValueError(
                        f"pipelines.{i}.trigger.prefix: {trig!r} overlaps {out!r} ({where}): "
                        "a job's own writes would start new jobs"
                    )
            for j, other in enumerate(self.pipelines[:i]):
                if trig.startswith(other.trigger.prefix) or other.trigger.prefix.startswith(trig):
                    raise ValueError(
                        f"pipelines.{i}.trigger.prefix: {trig!r} overlaps pipelines.{j}.trigger.prefix "
                        f"{other.trigger.prefix!r}: one file would start two jobs"
                    )
        return self

    def get(self, name: str) -> Pipeline:
        """The pipeline called `name`; UnknownPipeline if there is none."""
        for p in self.pipelines:
            if p.name == name:
                return p
        raise UnknownPipeline(name)

    def match(self, key: str) -> Pipeline | None:
        """The pipeline whose trigger matches the (decoded) object key, if any."""
        return next((p for p in self.pipelines if p.trigger.matches(key)), None)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for e in err.errors():
        if e["loc"]:
            lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}")
        else:  # a cross-field check: its message starts with the path it blames
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_pipelines(data: Any, source: str = "<data>") -> PipelinesConfig:
    try:
        return PipelinesConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def pipelines_json(config: PipelinesConfig) -> str:
    """The validated pipelines as JSON: what the Lambdas and the bastion read (no PyYAML there)."""
    return config.model_dump_json(indent=1) + "\n"


def load_pipelines(path: str | Path) -> PipelinesConfig:
    """Load pipelines from a .yaml/.yml (needs PyYAML) or .json file; ConfigError names the bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read pipeline config {path}: {err.strerror}") from None
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml  # only where people edit YAML; Lambdas get JSON

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"invalid YAML in {path}: {err}") from None
    return parse_pipelines(data, str(path))


def aws_ids(kind: str) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    """A field check: every value is an AWS resource id `<kind>-<8 or 17 hex digits>`."""

    def check(value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            if not re.fullmatch(rf"{kind}-[0-9a-f]{{8,17}}", v):
                raise ValueError(f"{v!r} is not a {kind} id like {kind}-0123456789abcdef0")
        return value

    return check


class Ec2Deployment(_Strict):
    """Where EC2 clusters go: written by the stack onto the bastion, never hard-coded per region."""

    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    subnet_ids: tuple[str, ...] = Field(min_length=1)
    security_group_ids: tuple[str, ...] = Field(min_length=1)
    node_instance_profile_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:instance-profile/.+$")
    ami_id: str = Field(pattern=r"^ami-[0-9a-f]{8,17}$")
    ssh_user: str = "ubuntu"
    ray_preinstalled: bool = False  # an AMI with the pinned Ray: skip the install on boot
    #: Deep-merged into every rendered cluster.yaml before Ray's validation (which still runs,
    #: with the product's own rules): e.g. an existing key pair. The EC2 stand-in's deltas
    #: live here (raylauncher/local/ec2_standin/deltas.py); a stack writes none.
    cluster_config_overrides: dict[str, Any] = Field(default_factory=dict)

    _subnets = field_validator("subnet_ids")(aws_ids("subnet"))
    _groups = field_validator("security_group_ids")(aws_ids("sg"))


def load_ec2_deployment(path: str | Path) -> Ec2Deployment:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read EC2 deployment {path}: {err}") from None
    try:
        return Ec2Deployment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, str(path))) from None


ENV_PREFIX = "RAYLAUNCHER_"

#: The bastion's layout, as the stack installs it (cdk/bastion.py) and the driver relies on it.
BASTION_HOME = "/opt/raylauncher"
BASTION_APP_DIR = f"{BASTION_HOME}/app"  # the installed project: jobs/, pipelines.json
BASTION_VENV = f"{BASTION_HOME}/venv"
#: Settings of the bastion's driver, as KEY=value lines (bash `source` and systemd EnvironmentFile).
BASTION_ENV_FILE = "/etc/raylauncher/env"
#: What the SSM command runs: reads BASTION_ENV_FILE, then execs the venv's `raylauncher`.
BASTION_LAUNCHER = f"{BASTION_HOME}/bin/raylauncher"
BASTION_EC2_DEPLOYMENT_FILE = "/etc/raylauncher/ec2-deployment.json"
BASTION_STATE_DIR = "/var/lib/raylauncher"


class Settings(_Strict):
    """Where things are. Built once per process from environment variables (`from_env`)."""

    table: str = Field(min_length=3)
    idempotency_table: str = Field(default="raylauncher-idempotency", min_length=3)
    bucket: str = Field(min_length=3)
    pipelines_file: str
    region: str = "us-east-1"
    endpoint_url: str | None = None  # local mode: the moto server; None on AWS
    bastion: Literal["ssm", "local"] = "ssm"
    bastion_instance_id: str | None = None
    ssm_log_group: str | None = None  # CloudWatch Logs group for the SSM command's output
    event_bus: str | None = None  # EventBridge bus for job state-change events; None: none are published
    launcher_bin: str = BASTION_LAUNCHER  # on the bastion
    cluster_backend: Literal["local", "ec2"] = "ec2"
    project_dir: str = BASTION_APP_DIR  # holds jobs/ on the bastion
    state_dir: str = BASTION_STATE_DIR  # driver logs and temp files on the bastion
    detach: Literal["process", "systemd"] = "systemd"
    max_clusters_total: int = Field(default=10, ge=1)  # admission control, all pipelines together
    poll_interval_s: float = Field(default=2.0, gt=0)
    provisioning_timeout_s: int = Field(default=900, ge=5)  # ray up + head ready
    teardown_timeout_s: int = Field(default=900, ge=5)  # all ray down attempts together
    down_attempts: int = Field(default=5, ge=1)
    ec2_deployment_file: str | None = None  # JSON (Ec2Deployment) written by the stack
    dashboard_port: int = Field(default=8265, ge=1, le=65535)
    claim_stale_after_s: float = Field(default=300, gt=0)  # > the intake Lambda's timeout (claims.py)
    heartbeat_interval_s: float = Field(default=10, gt=0)  # the driver renews its lease this often
    driver_lease_s: float = Field(default=60, gt=0)  # no heartbeat for this long: the driver is lost
    log_flush_interval_s: float = Field(default=15, gt=0)  # the Ray job's log is copied to S3 this often
    session_logs_timeout_s: float = Field(default=60, ge=0)  # fetching the head's session logs before teardown
    #: The release this deployment runs (raylauncher/releases.py), stamped on every job it creates.
    release: str | None = Field(default=None, pattern=r"^[0-9a-f]{12}$")

    @model_validator(mode="after")
    def _bastion_needs_instance(self) -> Settings:
        if self.driver_lease_s < 3 * self.heartbeat_interval_s:
            raise ValueError("driver_lease_s must be at least 3 heartbeat intervals (heartbeat_interval_s)")
        if self.bastion == "ssm" and not self.bastion_instance_id:
            raise ValueError("bastion_instance_id is required when bastion is 'ssm'")
        if self.endpoint_url and not re.match(r"^https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/?$", self.endpoint_url):
            raise ValueError("endpoint_url may only point at this machine (local mode)")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read RAYLAUNCHER_<FIELD> (upper case) plus AWS_REGION / AWS_ENDPOINT_URL."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env and env[key] != "":
                values[name] = env[key]
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            values.setdefault("region", region)
        if env.get("AWS_ENDPOINT_URL"):
            values.setdefault("endpoint_url", env["AWS_ENDPOINT_URL"])
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            described = _describe(err, "environment")
            for name in cls.model_fields:
                described = described.replace(f"  {name}:", f"  {ENV_PREFIX}{name.upper()}:")
            raise ConfigError(described) from None

    def to_env(self) -> dict[str, str]:
        """The inverse of from_env: what a child process (the driver) needs to see the same world."""
        env = {ENV_PREFIX + k.upper(): str(v) for k, v in self.model_dump().items() if v is not None}
        env["AWS_REGION"] = self.region
        env["AWS_DEFAULT_REGION"] = self.region
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        return env
