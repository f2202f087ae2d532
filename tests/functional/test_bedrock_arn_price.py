"""A Bedrock deployment named by an ARN that names no model (an application inference profile, a provisioned
throughput) was priced as the public model name's built-in price: Anthropic's own (the global profile's),
silently. Found by review.

The built-in table prices a geographic or in-Region Claude Sonnet 4.5 10% above the global profile
(handler/pipeline/prices.yaml, `bedrock-regional/...`) and refuses an inference profile it does not price rather than
charge it as a relative (`PriceTable.unknown_profile`: "priced by the public name, Sonnet 4.5 through `apac.` would be
charged the global $3/$15 instead of $3.30/$16.50, 10% short, and `config check` would say nothing"). An application
inference profile is made by copying a system profile, most often a geographic one (`us.`: $3.30/$16.50; AWS's user
guide, "Create an application inference profile": "copy ... a cross-region (system-defined) inference profile"), and a
provisioned model is billed by the hour, not per token: neither is the global per-token price. docs/messages-api.md
itself says such an ARN "names no model". Yet `price_for` falls back to the public name (`claude-sonnet-4-5`, $3/$15),
and `gateway config check` passes it. A bare in-Region id of the same model is priced $3.30 (the first case: the
control)."""

from __future__ import annotations

import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.pipeline.pricing import arn_model, price_for

NAME = "claude-sonnet-4-5"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6"
PROVISIONED_ARN = "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdef123456"


def price(upstream: str) -> tuple[float, float] | None:
    deployment = {"provider": "bedrock", "model": upstream, "region": "us-east-1"}
    config = parse_config(
        {"providers": {"bedrock": {"type": "bedrock"}}, "models": {NAME: {"deployments": [deployment]}}}, set(REGISTRY)
    )
    found = price_for(NAME, config.models[NAME], upstream)
    return None if found is None else (found.input, found.output)


def test_an_in_region_id_is_priced_regional() -> None:  # (the control)
    assert price("us.anthropic.claude-sonnet-4-5-20250929-v1:0") == (3.30, 16.50)


@pytest.mark.parametrize("arn", [PROFILE_ARN, PROVISIONED_ARN], ids=["application-inference-profile", "provisioned"])
def test_an_arn_that_names_no_model_is_not_priced_as_anthropics_global_price(arn: str) -> None:
    assert price(arn) != (3.00, 15.00)  # unpriced (None: `config check` names it), as an unknown profile is


# A model's id holds a version after a colon (`...-v1:0`): read as what follows an ARN's last colon, `0`, every ARN of
# a model or a system profile was taken for one that names no model, unpriced. (mergerev35c)
FOUNDATION = "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-sonnet-4-5-20250929-v1:0"
SYSTEM_PROFILE = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.mark.parametrize(
    ("arn", "named"),
    [
        (FOUNDATION, "anthropic.claude-sonnet-4-5-20250929-v1:0"),
        (SYSTEM_PROFILE, "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ],
    ids=["foundation-model", "inference-profile"],
)
def test_arn_model_keeps_the_ids_version(arn: str, named: str) -> None:
    assert arn_model(arn) == named


@pytest.mark.parametrize("arn", [FOUNDATION, SYSTEM_PROFILE], ids=["foundation-model", "inference-profile"])
def test_a_versioned_model_arn_is_priced_as_the_id_it_names(arn: str) -> None:
    assert price(arn) == (3.30, 16.50)  # the in-Region / `us.` price, as the bare id is priced
