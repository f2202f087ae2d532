"""The deployment as the code expects it: template.yaml, infra/ and samconfig.toml, checked without an AWS account.

cfn-lint (and `sam validate --lint` where the sam CLI is installed, e.g. by `make sam-check`) must pass; the
table, the two endpoints, the streaming set-up and the IAM scope are asserted against what the code reads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.support.dynamo import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = [ROOT / "template.yaml", *sorted((ROOT / "infra").glob("*.yaml"))]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def function(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's properties with the template's Globals merged in, as SAM does."""
    merged: dict[str, Any] = dict(template["Globals"]["Function"])
    props = template["Resources"][name]["Properties"]
    for key, value in props.items():
        if key == "Environment":
            variables = {**merged["Environment"]["Variables"], **value["Variables"]}
            merged["Environment"] = {"Variables": variables}
        else:
            merged[key] = value
    return merged


def sub_text(value: Any) -> str:
    """The template string of a `!Sub`, with or without its variable map."""
    sub = value["Fn::Sub"]
    return str(sub[0] if isinstance(sub, list) else sub)


def source(relative: str) -> str:
    return (ROOT / relative).read_text()


def sam_cli() -> str | None:
    local = ROOT / ".venv-sam" / "bin" / "sam"
    return str(local) if local.exists() else shutil.which("sam")


def test_cfn_lint_is_clean() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    answer = subprocess.run(
        [str(cfn_lint), *map(str, TEMPLATES)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_sam_validate_lint_is_clean() -> None:
    sam = sam_cli()
    if sam is None:
        pytest.skip("no sam CLI here (make sam-check installs one)")
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    answer = subprocess.run([sam, "validate", "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert answer.returncode == 0, answer.stdout + answer.stderr


def test_table_has_the_schema_the_store_uses(template: dict[str, Any]) -> None:
    table = template["Resources"]["GatewayTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table["DeletionPolicy"] == "Retain"
    props = table["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    [index] = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "gsi1"
    assert index["KeySchema"] == [
        {"AttributeName": "gsi1pk", "KeyType": "HASH"},
        {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "ALL"}
    assert {d["AttributeName"]: d["AttributeType"] for d in props["AttributeDefinitions"]} == {
        "pk": "S",
        "sk": "S",
        "gsi1pk": "S",
        "gsi1sk": "S",
    }
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}, "global table replicas need it"

    store = source("adapters/store/dynamodb.py") + source("adapters/store/dynamo_keys.py")
    assert 'IndexName="gsi1"' in store
    for attribute in ('"pk"', '"sk"', '"gsi1pk"', '"gsi1sk"', '"ttl"'):
        assert attribute in store


def test_both_functions_run_the_app_on_arm64_with_tracing(template: dict[str, Any]) -> None:
    for name in ("GatewayFunction", "GatewayStreamFunction"):
        fn = function(template, name)
        assert fn["Architectures"] == ["arm64"]
        assert fn["Tracing"] == "Active"
        assert fn["Runtime"] in {"python3.12", "python3.13"}
        assert template["Resources"][name]["Metadata"] == {"BuildMethod": "makefile", "ContextPath": "infra"}
        assert f"build-{name}:" in source("infra/Makefile") or f"build-{name} " in source("infra/Makefile")
        variables = fn["Environment"]["Variables"]
        assert sub_text(variables["GATEWAY_STORE"]) == "dynamodb://${Name}?region=${AWS::Region}"
        assert "GATEWAY_CONFIG" in variables
        for setting in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"):
            assert setting in variables
            assert setting in source("handler/telemetry/observability.py")
    assert function(template, "GatewayFunction")["Handler"] == "handler.entry.lambda_handler.handler"


def test_buffered_function_takes_every_route_of_the_http_api(template: dict[str, Any]) -> None:
    fn = function(template, "GatewayFunction")
    [event] = fn["Events"].values()
    assert event["Type"] == "HttpApi"
    assert event["Properties"]["ApiId"] == {"Ref": "GatewayHttpApi"}
    # No Path or Method: the $default route, the routeKey every events/*.json carries.
    assert "Path" not in event["Properties"] and "Method" not in event["Properties"]
    assert fn["Timeout"] <= 30, "an HTTP API gives up after 30 s"
    assert fn["SnapStart"]["ApplyOn"]["Fn::If"][1:] == ["PublishedVersions", "None"]
    assert fn["AutoPublishAlias"], "SnapStart applies to published versions only"


def test_streaming_function_streams_through_the_web_adapter(template: dict[str, Any]) -> None:
    fn = function(template, "GatewayStreamFunction")
    assert fn["FunctionUrlConfig"] == {"AuthType": "NONE", "InvokeMode": "RESPONSE_STREAM"}
    [layer] = fn["Layers"]
    assert re.fullmatch(
        r"arn:\$\{AWS::Partition\}:lambda:\$\{AWS::Region\}:753240598075:layer:LambdaAdapterLayerArm64:\$\{\w+\}",
        sub_text(layer),
    )
    variables = fn["Environment"]["Variables"]
    assert variables["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert variables["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert variables["AWS_LWA_READINESS_CHECK_PATH"] == "/health"
    assert fn["Handler"] == "run.sh"
    run = ROOT / "infra" / "run.sh"
    assert os.access(run, os.X_OK)
    script = run.read_text()
    assert "handler.entry.asgi:app" in script and "AWS_LWA_PORT" in script and "--no-proxy-headers" in script
    assert "SnapStart" not in template["Resources"]["GatewayStreamFunction"]["Properties"]


def test_the_streaming_function_writes_its_log_and_metric_lines_before_it_is_frozen(template: dict[str, Any]) -> None:
    """run.sh's uvicorn writes to a pipe, which Python buffers by the block: through an emulation of the Web Adapter's
    freezes (without PYTHONUNBUFFERED), neither a stream's nor a whole answer's request line and EMF line (its
    spend_usd, the spend alarm's input) had left the process 3 s into the freeze after its invocation; an environment
    recycled then loses them."""
    variables = function(template, "GatewayStreamFunction")["Environment"]["Variables"]
    assert variables["PYTHONUNBUFFERED"] == "1"


def test_outputs_name_both_endpoints_and_the_table(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert sub_text(outputs["ApiEndpoint"]["Value"]).startswith("https://${GatewayHttpApi}.execute-api.")
    assert outputs["StreamEndpoint"]["Value"] == {"Fn::GetAtt": ["GatewayStreamFunctionUrl", "FunctionUrl"]}
    assert "TableName" in outputs and "HttpApiId" in outputs


def test_outputs_name_the_log_group_each_function_logs_to(template: dict[str, Any]) -> None:
    """The functions log to groups the template creates without a name (`<stack>-GatewayLogGroup-<suffix>`), and the
    docs' replay of spooled settlements read `/aws/lambda/<function>`, which holds nothing; no output named them."""
    outputs = template["Outputs"]
    named = {"GatewayFunction": "GatewayLogGroupName", "GatewayStreamFunction": "GatewayStreamLogGroupName"}
    for name, output in named.items():
        group = template["Resources"][name]["Properties"]["LoggingConfig"]["LogGroup"]
        assert outputs[output]["Value"] == group  # (a `Ref` of an AWS::Logs::LogGroup is its name)
        assert template["Resources"][group["Ref"]]["Type"] == "AWS::Logs::LogGroup"
    store = source("docs/store.md")  # its replay of spooled settlements reads both groups, named by the outputs
    assert re.findall(r"--log-group-name (\S+)", store) == ['"$group"']
    assert re.findall(r"for output in (\w+) (\w+); do", store) == [("GatewayLogGroupName", "GatewayStreamLogGroupName")]


def test_the_log_groups_outlive_the_stack(template: dict[str, Any]) -> None:
    """Retiring a region deletes its stack, and the log groups went with it: a settlement spooled by an environment
    Lambda recycled is in its function's log alone until `gateway store replay-logs` lands it (docs/store.md), so
    that spend was never charged. Found by review (cfn-lint's I3011)."""
    groups = {name: r for name, r in template["Resources"].items() if r["Type"] == "AWS::Logs::LogGroup"}
    assert set(groups) == {"GatewayLogGroup", "GatewayStreamLogGroup"}
    for group in groups.values():
        assert group["DeletionPolicy"] == group["UpdateReplacePolicy"] == "Retain"
    retiring = source("docs/deploying.md").partition("### Retiring a region")[2].partition("\n## ")[0]
    steps = ["sam delete", "gateway store replay-logs", "gateway store retire-region", "--replica-updates 'Delete="]
    assert all(step in retiring for step in steps)
    assert [retiring.index(step) for step in steps] == sorted(retiring.index(step) for step in steps)


def test_iam_is_scoped_to_the_table_the_secrets_prefix_and_bedrock(template: dict[str, Any]) -> None:
    [policy] = resources(template, "AWS::IAM::ManagedPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    for name in ("GatewayFunction", "GatewayStreamFunction"):
        assert template["Resources"][name]["Properties"]["Policies"] == [{"Ref": "GatewayAccessPolicy"}]
    actions: set[str] = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        granted = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        actions.update(granted)
        assert all("*" not in action for action in granted)
        targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        texts = [sub_text(t) for t in targets]
        assert "*" not in texts
        service = granted[0].split(":")[0]
        if service == "dynamodb":
            assert texts == [
                "arn:${AWS::Partition}:dynamodb:*:${AWS::AccountId}:table/${Name}",
                "arn:${AWS::Partition}:dynamodb:*:${AWS::AccountId}:table/${Name}/index/gsi1",
            ]
        elif service in {"ssm", "secretsmanager"}:
            prefixed = ("parameter/${ProviderSecretsPrefix}/*", "secret:${ProviderSecretsPrefix}/*")
            assert all("${AWS::Region}:${AWS::AccountId}:" in t and t.endswith(prefixed) for t in texts)
        elif service == "kms":
            assert statement["Condition"]["StringEquals"]["kms:ViaService"]
        else:
            assert service == "bedrock"
    assert actions == {
        *code_needs_of_dynamodb(),
        *code_needs_of_bedrock(),
        "ssm:GetParameter",
        "secretsmanager:GetSecretValue",
        "kms:Decrypt",
    }


# The IAM actions a DynamoDB call of the store needs. A transaction needs those of its items (Put and Update
# only: the store writes no Delete or ConditionCheck in one); `scan` is `gateway store migrate`'s, run with the
# operator's credentials, not the functions'.
DYNAMODB_ACTIONS = {
    "get_item": {"dynamodb:GetItem"},
    "batch_get_item": {"dynamodb:BatchGetItem"},
    "put_item": {"dynamodb:PutItem"},
    "update_item": {"dynamodb:UpdateItem"},
    "delete_item": {"dynamodb:DeleteItem"},
    "query": {"dynamodb:Query"},
    "transact_write_items": {"dynamodb:PutItem", "dynamodb:UpdateItem"},
    "scan": set(),
}
# Bedrock's runtime paths the adapter calls, and the action each needs (Converse is authorized as InvokeModel).
BEDROCK_ACTIONS = {
    "converse": "bedrock:InvokeModel",
    "converse-stream": "bedrock:InvokeModelWithResponseStream",
    "count-tokens": "bedrock:CountTokens",
}


def code_needs_of_dynamodb() -> set[str]:
    """The actions of every DynamoDB operation the store's code names (the policy granted four: a stored
    response's deletion, a sign-in's, and a child count's recount, which reads keys in batches, were 503s)."""
    from adapters.store.dynamo_client import OPERATIONS

    called: set[str] = set()
    for path in (ROOT / "adapters" / "store").glob("*.py"):
        if path.name != "dynamo_client.py":  # (its table of every operation it can sign)
            called |= set(re.findall(r'"(' + "|".join(OPERATIONS) + r')"', path.read_text()))
    assert called - DYNAMODB_ACTIONS.keys() == set(), "a DynamoDB call this test does not know the IAM action of"
    return set().union(*(DYNAMODB_ACTIONS[operation] for operation in called))


def code_needs_of_bedrock() -> set[str]:
    """The actions of the Bedrock runtime paths the adapter calls (Bedrock's CountTokens was denied: every
    `count_tokens` for Claude on Bedrock fell back to an estimate)."""
    source = (ROOT / "adapters" / "providers" / "bedrock" / "adapter.py").read_text()
    paths = set(re.findall(r'self\.url\(target, (?:"([a-z-]+)" if \w+ else )?"([a-z-]+)"\)', source))
    called = {path for pair in paths for path in pair if path}
    assert called and called <= BEDROCK_ACTIONS.keys(), called
    return {BEDROCK_ACTIONS[path] for path in called}


def test_alarms_watch_5xx_throttles_errors_and_the_metric_the_gateway_emits(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    metric_names = {a["Properties"].get("MetricName") for a in alarms.values()}
    assert {"5xx", "Url5xxCount"} <= metric_names
    watched = {
        m["MetricStat"]["Metric"]["MetricName"]
        for a in alarms.values()
        for m in a["Properties"].get("Metrics", [])
        if "MetricStat" in m
    }
    assert {"Errors", "Throttles"} <= watched
    spend = alarms["SpendAlarm"]["Properties"]["Metrics"][0]["Expression"]
    assert "SUM(spend_usd)" in sub_text(spend) and '"${MetricsNamespace}"' in sub_text(spend)
    observability = source("handler/telemetry/observability.py")
    assert '"spend_usd"' in observability and '"settlements_spooled"' in observability
    assert f'"{template["Parameters"]["MetricsNamespace"]["Default"]}"' in observability


def test_a_single_spooled_settlement_raises_an_alarm_that_says_what_to_do(template: dict[str, Any]) -> None:
    """The only alarm on the spool wanted `pending_settlements` above 0 in 3 periods running, with missing data not
    breaching; on Lambda that metric is written only while an environment runs, so a settlement spooled by one
    then frozen or recycled (its cost lost but for the logs) wrote one datapoint, and nothing fired. The alarm now
    counts spooled settlements, written by the spooling invocation itself, and fires on one within a period."""
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    assert not [name for name, alarm in alarms.items() if "pending" in str(alarm["Properties"])]
    spooled = alarms["SpooledSettlementsAlarm"]["Properties"]
    assert spooled["MetricName"] == "settlements_spooled" and spooled["Namespace"] == {"Ref": "MetricsNamespace"}
    service = template["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    assert spooled["Dimensions"] == [{"Name": "service", "Value": service}]  # the one dimension the line carries
    assert (spooled["Statistic"], spooled["EvaluationPeriods"], spooled["Threshold"]) == ("Sum", 1, 0)
    assert spooled["ComparisonOperator"] == "GreaterThanThreshold"
    assert spooled["AlarmActions"] == alarms["SpendAlarm"]["Properties"]["AlarmActions"]
    description = spooled["AlarmDescription"]
    assert "gateway store replay-logs" in description and "idempotent" in description
    for output in ("GatewayLogGroupName", "GatewayStreamLogGroupName"):
        assert output in description and output in template["Outputs"]


def test_samconfig_and_the_multi_region_script() -> None:
    config = tomllib.loads(source("samconfig.toml"))
    assert config["default"]["deploy"]["parameters"]["capabilities"] == "CAPABILITY_IAM"
    prod = {name: env for name, env in config.items() if name.startswith("prod-")}
    assert len(prod) >= 2
    creates = [
        name for name, env in prod.items() if "CreateTable=true" in env["deploy"]["parameters"]["parameter_overrides"]
    ]
    assert len(creates) == 1, "exactly one region creates the global table"
    for name, env in prod.items():
        assert env["deploy"]["parameters"]["region"] == name.removeprefix("prod-")
        assert "TableName=llm-gateway" in env["deploy"]["parameters"]["parameter_overrides"]

    deploy = ROOT / "infra" / "deploy.sh"
    assert os.access(deploy, os.X_OK)
    assert subprocess.run(["bash", "-n", str(deploy)], capture_output=True).returncode == 0
    script = deploy.read_text()
    assert "--replica-updates" in script and "CreateTable=" in script and 'sam deploy --region "$region"' in script


def test_each_production_region_reads_its_own_config_and_local_invoke_the_stacks_table() -> None:
    """The `prod-*` sections gave no `ConfigFile` (the functions ran the shipped default, whose keys the template
    does not set: every provider a 503), and `sam local invoke` named its table after a stack called `local`."""
    config = tomllib.loads(source("samconfig.toml"))
    for name, env in config.items():
        if name.startswith("prod-"):
            overrides = env["deploy"]["parameters"]["parameter_overrides"].split()
            assert f"ConfigFile=config/{name.removeprefix('prod-')}.yaml" in overrides, name
    assert "TableName=llm-gateway" in config["default"]["local_invoke"]["parameters"]["parameter_overrides"].split()


@pytest.mark.parametrize("certificate", ["", "arn:aws:acm:us-east-1:123456789012:certificate/abc"])
def test_the_dns_stack_gets_a_certificate_only_when_one_is_given(tmp_path: Path, certificate: str) -> None:
    """`deploy.sh` passed `CertificateArn=` empty when no certificate was set (the documented default), which sam
    refuses ("CertificateArn= is not a valid format"): the script stopped at its DNS step."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text("#!/bin/sh\necho api123\n")
    (bin_dir / "sam").write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {tmp_path / "sam-args"}\n')
    for tool in ("aws", "sam"):
        (bin_dir / tool).chmod(0o755)
    script = (ROOT / "infra" / "deploy.sh").read_text()
    function = script[script.index("deploy_dns() {") : script.index("\n}\n", script.index("deploy_dns() {")) + 3]
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CERTIFICATE_ARN_us_east_1": certificate}
    run = f"say() {{ :; }}\n{function}\nSTACK_NAME=s DOMAIN=d.example HOSTED_ZONE_ID=Z1\ndeploy_dns us-east-1\n"
    assert subprocess.run(["bash", "-c", run], env=environ).returncode == 0
    passed = (tmp_path / "sam-args").read_text().splitlines()
    assert "HttpApiId=api123" in passed
    certificates = [a for a in passed if a.startswith("CertificateArn")]
    assert certificates == ([f"CertificateArn={certificate}"] if certificate else [])


def test_deploy_sh_without_regions_prints_its_usage_and_nothing_of_its_code() -> None:
    """Its usage was `sed -n '2,18p'` of itself, whose line 18 is the first of code: it ended in `set -euo
    pipefail`. Found by review."""
    ran = subprocess.run(["bash", str(ROOT / "infra" / "deploy.sh")], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 2
    assert ran.stdout.startswith("Deploys the gateway") and "infra/deploy.sh eu-central-1" in ran.stdout
    assert "set -euo pipefail" not in ran.stdout and "REPLICA_WAIT_SECONDS" in ran.stdout


@pytest.mark.parametrize(
    ("status", "said"),
    [
        ("ACTIVE", None),
        ("CREATING", "the replica in us-east-1 is still CREATING after 60 s"),
        ("REGION_DISABLED", "the replica in us-east-1 is REGION_DISABLED, not ACTIVE"),
    ],
)
def test_deploy_sh_waits_for_a_replica_a_bounded_time(tmp_path: Path, status: str, said: str | None) -> None:
    """`add_replica` waited for ACTIVE forever: a replica that could not be made (a region not enabled, a quota)
    hung the script, saying nothing. Found by review."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "aws-calls"}\necho {status}\n')
    (bin_dir / "aws").chmod(0o755)
    script = (ROOT / "infra" / "deploy.sh").read_text()
    functions = script[script.index("replica_status() {") : script.index("\n}\n", script.index("add_replica() {")) + 3]
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "REPLICA_WAIT_SECONDS": "60"}
    run = f'say() {{ echo "$*" >&2; }}\nsleep() {{ :; }}\n{functions}\nSTACK_NAME=s HOME_REGION=eu-central-1\n'
    ran = subprocess.run(
        ["bash", "-c", run + "add_replica us-east-1"], env=environ, capture_output=True, text=True, timeout=30
    )
    calls = (tmp_path / "aws-calls").read_text().splitlines()
    if said is None:
        assert ran.returncode == 0 and any("update-continuous-backups" in call for call in calls), ran.stderr
    else:
        assert ran.returncode == 1 and said in ran.stderr, ran.stderr
        assert not any("update-continuous-backups" in call for call in calls)
        assert len(calls) <= 6  # (60 s of 15 s waits: 5 looks, and the first)
