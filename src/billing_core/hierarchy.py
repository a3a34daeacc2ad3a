"""The customer tree: cycles, families, billed customers and pool membership."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    """What the tree needs to know of a customer."""

    id: str
    parent_id: str | None
    bill_to: str
    currency: str
    name: str = ""


class Hierarchy:
    """A forest of customers, keyed by id."""

    def __init__(self, nodes: Iterable[Node]):
        self.nodes: dict[str, Node] = {n.id: n for n in nodes}
        self._children: dict[str, list[str]] = defaultdict(list)
        for node in self.nodes.values():
            if node.parent_id is not None:
                self._children[node.parent_id].append(node.id)
        for kids in self._children.values():
            kids.sort()

    def find_cycle(self) -> list[str] | None:
        """A parent cycle as a path that returns to its start, or None."""
        done: set[str] = set()
        for start in sorted(self.nodes):
            path: list[str] = []
            seen: dict[str, int] = {}
            current: str | None = start
            while current is not None and current not in done:
                if current in seen:
                    return path[seen[current] :] + [current]
                seen[current] = len(path)
                path.append(current)
                node = self.nodes.get(current)
                current = node.parent_id if node else None
            done.update(path)
        return None

    def parent(self, customer_id: str) -> str | None:
        node = self.nodes.get(customer_id)
        return node.parent_id if node else None

    def children(self, customer_id: str) -> list[str]:
        return self._children.get(customer_id, [])

    def root(self, customer_id: str) -> str:
        """The top of the customer's tree (its family id)."""
        current = customer_id
        while (parent := self.parent(current)) is not None:
            current = parent
        return current

    def ancestors(self, customer_id: str) -> list[str]:
        out = []
        current = self.parent(customer_id)
        while current is not None:
            out.append(current)
            current = self.parent(current)
        return out

    def default_rollup(self, customer_id: str) -> bool:
        """A subscription rolls up by default when its customer bills to its parent."""
        node = self.nodes[customer_id]
        return node.parent_id is not None and node.bill_to == "parent"

    def billed_customer(self, customer_id: str, rollup: bool) -> str:
        """Who pays: up one level if the subscription rolls up, then on while the
        customer reached bills to its parent. A parent-less customer bills itself."""
        current = customer_id
        if not rollup or self.parent(current) is None:
            return current
        current = self.parent(current)  # type: ignore[assignment]
        while self.nodes[current].bill_to == "parent" and self.parent(current) is not None:
            current = self.parent(current)  # type: ignore[assignment]
        return current

    def bills_through(self, owner: str) -> list[str]:
        """The owner and every descendant whose bill_to chain reaches it."""
        out = [owner]
        stack = list(reversed(self.children(owner)))
        while stack:
            child = stack.pop()
            if self.nodes[child].bill_to != "parent":
                continue
            out.append(child)
            stack.extend(reversed(self.children(child)))
        return out


def families(hierarchy: Hierarchy) -> Mapping[str, str]:
    """customer id -> root id, for every customer."""
    return {cid: hierarchy.root(cid) for cid in hierarchy.nodes}
