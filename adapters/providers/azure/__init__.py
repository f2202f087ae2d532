"""The `azure` provider type: Azure OpenAI Service deployments."""

from adapters.providers.azure.adapter import AzureOpenAIAdapter

__all__ = ["AzureOpenAIAdapter"]
