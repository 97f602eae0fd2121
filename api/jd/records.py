"""Reading JOS answers whose shape varies by method: the records list and a field under its common names.

JD methods wrap their records differently (`result.data`, `wareInfos`, `returnType.list` ...) and name a
field in several ways (`skuName` / `name` / `title`); one reader serves every pull that lists records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def first_records(result: Any) -> list[dict[str, Any]]:
    """The first list of objects anywhere in the JOS result (breadth first)."""
    queue = [result]
    while queue:
        node = queue.pop(0)
        if isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
            return node
        if isinstance(node, dict):
            queue.extend(node.values())
        elif isinstance(node, list):
            queue.extend(node)
    return []


def first_value(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of `keys` that the record holds and that is not empty."""
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)
