"""The DynamoDB store's thread answers (see `adapters/store/threads.py`): a module of its own, so that a process on the
embedded store imports neither it nor the DynamoDB client its methods import."""

from __future__ import annotations

import time
from typing import Any

from adapters.store.expressions import num, read_num, text
from handler.ports import ThreadAnswer

THREAD_SK = "THREAD"


class DynamoDBThreads:
    """The same on the DynamoDB store's table: one item per answer (see `adapters/store/threads.py`)."""

    client: Any
    table: str

    @staticmethod
    def _thread_key(message_id: str) -> dict[str, Any]:
        return {"pk": text(f"THREAD#{message_id}"), "sk": text(THREAD_SK)}

    async def put_thread_answer(self, answer: ThreadAnswer) -> None:
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        item = {
            **self._thread_key(answer.id),
            "key_id": text(answer.key_id),
            "ancestors": {"L": [text(ancestor) for ancestor in answer.ancestors]},
            "expires_at": num(answer.expires_at),
            "ttl": num(int(answer.expires_at) + 1),
        }
        if answer.advisors:  # (absent: the thread holds none)
            item["advisors"] = {
                "L": [
                    {"M": {"model": text(model), "max_uses": num(uses), "max_tokens": num(advice)}}
                    for model, uses, advice in answer.advisors
                ]
            }
        await call(self.client, "put_item", TableName=self.table, Item=item)

    async def get_thread_answer(self, message_id: str) -> ThreadAnswer | None:
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        answer = await call(
            self.client, "get_item", TableName=self.table, Key=self._thread_key(message_id), ConsistentRead=True
        )
        item = answer.get("Item")
        if not item or read_num(item, "expires_at") < time.time():
            return None
        ancestors = [str(entry["S"]) for entry in item.get("ancestors", {}).get("L", [])]
        advisors = tuple(
            (str(tool["model"]["S"]), int(tool["max_uses"]["N"]), int(tool["max_tokens"]["N"]))
            for tool in (entry["M"] for entry in item.get("advisors", {}).get("L", []))
        )
        return ThreadAnswer(message_id, str(item["key_id"]["S"]), ancestors, read_num(item, "expires_at"), advisors)
