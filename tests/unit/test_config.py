"""Pipeline config and settings: validated once, and a bad field is named by its path."""

import json
from pathlib import Path

import pytest

from raylauncher.config import Settings, load_pipelines, parse_pipelines
from raylauncher.errors import ConfigError
from raylauncher.notifications import notification_filters, queue_notification_configuration

PROJECT_DIR = Path(__file__).resolve().parents[2]


def pipeline(**overrides: object) -> dict:
    base = {
        "name": "sales-summary",
        "trigger": {"prefix": "incoming/sales/", "suffix": ".csv"},
        "entrypoint": {"script": "jobs/sales_summary/main.py"},
        "output_prefix": "outputs/sales-summary/",
    }
    return {**base, **overrides}


def test_sample_config_loads() -> None:
    # Given the shipped pipelines.yaml, When it is loaded
    config = load_pipelines(PROJECT_DIR / "pipelines.yaml")
    # Then the sample pipeline has the walkthrough's cluster shape
    p = config.get("sales-summary")
    assert (p.cluster.head_instance_type, p.cluster.worker_instance_type) == ("m6i.xlarge", "m6i.2xlarge")
    assert (p.cluster.min_workers, p.cluster.max_workers) == (4, 8)
    assert p.trigger.matches("incoming/sales/daily report.csv")
    assert not p.trigger.matches("incoming/sales/readme.txt")


def test_json_export_loads_identically(tmp_path: Path) -> None:
    # Given the YAML config exported as JSON (what a Lambda ships), Then both load the same
    config = load_pipelines(PROJECT_DIR / "pipelines.yaml")
    out = tmp_path / "pipelines.json"
    out.write_text(config.model_dump_json())
    assert load_pipelines(out) == config


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        (pipeline(trigger={"prefix": "/abs/"}), "pipelines.0.trigger.prefix"),
        (pipeline(trigger={"prefix": "no-trailing-slash"}), "pipelines.0.trigger.prefix"),
        (pipeline(entrypoint={"script": "../etc/passwd.py"}), "pipelines.0.entrypoint.script"),
        (pipeline(entrypoint={"script": "scripts/x.py"}), "pipelines.0.entrypoint.script"),
        (pipeline(name="Bad Name"), "pipelines.0.name"),
        (pipeline(run_timeout_s=1), "pipelines.0.run_timeout_s"),
        (pipeline(cluster={"min_workers": 9, "max_workers": 8}), "pipelines.0.cluster"),
        (pipeline(cluster={"worker_count": 3}), "pipelines.0.cluster.worker_count"),
        (pipeline(output_prefix="incoming/sales/out/"), "pipelines.0.trigger.prefix"),
        (pipeline(trigger={"prefix": "jobs/"}), "pipelines.0.trigger.prefix"),
    ],
)
def test_bad_config_names_the_field(bad: dict, path: str) -> None:
    # Given a config with one bad field, When it is parsed, Then the error names that field's path
    with pytest.raises(ConfigError) as err:
        parse_pipelines({"pipelines": [bad]}, "test.yaml")
    assert f"  {path}:" in str(err.value)
    assert "test.yaml" in str(err.value)


def test_overlapping_triggers_are_rejected() -> None:
    # Given two pipelines whose triggers overlap, Then one file would start two jobs: refused
    second = pipeline(name="other", trigger={"prefix": "incoming/"}, output_prefix="outputs/other/")
    with pytest.raises(ConfigError, match="pipelines.1.trigger.prefix: 'incoming/' overlaps pipelines.0"):
        parse_pipelines({"pipelines": [pipeline(), second]})


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_pipelines(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pipelines: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_pipelines(broken)


def test_settings_from_env_and_back() -> None:
    # Given the environment a Lambda or the bastion has
    env = {
        "RAYLAUNCHER_TABLE": "jobs",
        "RAYLAUNCHER_BUCKET": "data",
        "RAYLAUNCHER_PIPELINES_FILE": "pipelines.json",
        "RAYLAUNCHER_BASTION_INSTANCE_ID": "i-0123456789abcdef0",
        "AWS_REGION": "ap-northeast-2",
    }
    # When settings are read, Then they carry the values, and to_env reproduces them
    settings = Settings.from_env(env)
    assert (settings.region, settings.bastion, settings.cluster_backend) == ("ap-northeast-2", "ssm", "ec2")
    assert Settings.from_env(settings.to_env()) == settings


def test_settings_errors_name_the_env_var() -> None:
    # Given an environment missing the table and with an SSM bastion but no instance id
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"RAYLAUNCHER_BUCKET": "data", "RAYLAUNCHER_PIPELINES_FILE": "p.json"})
    # Then the error names the environment variables to set
    assert "RAYLAUNCHER_TABLE:" in str(err.value)


def test_endpoint_override_must_be_loopback() -> None:
    env = {"RAYLAUNCHER_TABLE": "jobs", "RAYLAUNCHER_BUCKET": "data", "RAYLAUNCHER_PIPELINES_FILE": "p",
           "RAYLAUNCHER_BASTION": "local", "AWS_ENDPOINT_URL": "http://10.0.0.5:5000"}  # fmt: skip
    with pytest.raises(ConfigError, match="endpoint_url"):
        Settings.from_env(env)


def test_notification_config_has_one_filter_per_pipeline() -> None:
    # Given the sample config, When the bucket notification is built
    config = load_pipelines(PROJECT_DIR / "pipelines.yaml")
    doc = queue_notification_configuration(config, "arn:aws:sqs:us-east-1:123456789012:q")
    # Then each pipeline's prefix/suffix is a filter on ObjectCreated events to the queue
    assert notification_filters(config) == [{"prefix": "incoming/sales/", "suffix": ".csv"}]
    (only,) = doc["QueueConfigurations"]
    assert only["Events"] == ["s3:ObjectCreated:*"]
    assert only["Filter"]["Key"]["FilterRules"] == [
        {"Name": "prefix", "Value": "incoming/sales/"},
        {"Name": "suffix", "Value": ".csv"},
    ]
    json.dumps(doc)  # plain data, usable by boto3 and by the CDK alike
