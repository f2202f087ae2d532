"""A function tool as the chat tests offer it, in OpenAI's Chat Completions shape."""

from __future__ import annotations

from typing import Any

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
