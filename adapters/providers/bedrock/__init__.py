"""The `bedrock` provider type: Amazon Bedrock's Converse API, SigV4-signed."""

from adapters.providers.bedrock.adapter import BedrockAdapter

__all__ = ["BedrockAdapter"]
