"""The customer tree: cycles, families, billed customers and pool membership.

Trees may be of any depth (a chain of 100,000 customers is a valid tree), so nothing
here walks a customer's ancestors per customer: roots, depths and payers are computed
once, parents before children, and every question is then a look-up. No recursion.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
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
        self._order: list[str] | None = None
        self._root: dict[str, str] = {}
        self._depth: dict[str, int] = {}
        self._payer: dict[str, str] = {}

    # --- cycles --------------------------------------------------------------------------

    def find_cycles(self) -> list[list[str]]:
        """Every parent cycle, each as a path that returns to its start (linear time)."""
        done: set[str] = set()
        cycles = []
        for start in sorted(self.nodes):
            path: list[str] = []
            seen: dict[str, int] = {}
            current: str | None = start
            while current is not None and current not in done:
                if current in seen:
                    cycles.append(path[seen[current] :] + [current])
                    break
                seen[current] = len(path)
                path.append(current)
                node = self.nodes.get(current)
                current = node.parent_id if node else None
            done.update(path)
        return cycles

    def find_cycle(self) -> list[str] | None:
        """A parent cycle as a path that returns to its start, or None."""
        cycles = self.find_cycles()
        return cycles[0] if cycles else None

    # --- one pass, parents before children -----------------------------------------------

    def order(self) -> list[str]:
        """Every customer outside a cycle, parents before children (breadth first)."""
        if self._order is None:
            tops = sorted(
                cid
                for cid, node in self.nodes.items()
                if node.parent_id is None or node.parent_id not in self.nodes
            )
            order = list(tops)
            for cid in order:  # grows while it is read: a breadth-first walk
                order.extend(self._children.get(cid, ()))
            self._order = order
            for cid in order:
                parent = self.nodes[cid].parent_id
                if parent is None:
                    self._root[cid], self._depth[cid] = cid, 0
                elif parent not in self.nodes:
                    self._root[cid], self._depth[cid] = parent, 1
                else:
                    self._root[cid], self._depth[cid] = self._root[parent], self._depth[parent] + 1
                node = self.nodes[cid]
                if node.bill_to == "parent" and parent in self.nodes:
                    self._payer[cid] = self._payer[parent]
                else:
                    self._payer[cid] = cid
        return self._order

    def _known(self, customer_id: str) -> bool:
        self.order()
        return customer_id in self._root

    # --- questions -----------------------------------------------------------------------

    def parent(self, customer_id: str) -> str | None:
        node = self.nodes.get(customer_id)
        return node.parent_id if node else None

    def children(self, customer_id: str) -> list[str]:
        return self._children.get(customer_id, [])

    def root(self, customer_id: str) -> str:
        """The top of the customer's tree (its family id)."""
        if self._known(customer_id):
            return self._root[customer_id]
        return self._walk_up(customer_id)[-1]

    def depth(self, customer_id: str) -> int:
        """How many ancestors the customer has."""
        if self._known(customer_id):
            return self._depth[customer_id]
        return len(self._walk_up(customer_id)) - 1

    def ancestors(self, customer_id: str) -> list[str]:
        return self._walk_up(customer_id)[1:]

    def _walk_up(self, customer_id: str) -> list[str]:
        """The customer and its ancestors; stops where a cycle would repeat."""
        out = [customer_id]
        seen = {customer_id}
        current = self.parent(customer_id)
        while current is not None and current not in seen:
            out.append(current)
            seen.add(current)
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
        parent: str = self.parent(current)  # type: ignore[assignment]
        if self._known(parent):
            return self._payer[parent]
        current = parent
        seen = {current}
        while self.nodes[current].bill_to == "parent" and self.parent(current) is not None:
            current = self.parent(current)  # type: ignore[assignment]
            if current in seen:
                break
            seen.add(current)
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

    def below_in_pools(
        self, marks: Callable[[str], Iterable[Hashable]], keep: int = 10
    ) -> dict[str, dict[Hashable, tuple[list[str], int]]]:
        """For every customer, what the rest of its `bills_through` group carries:
        mark -> (the first `keep` members carrying it, in `bills_through` order, and how
        many do). One pass from the leaves up, so nested pools over a deep tree stay
        linear in the number of customers (times the number of distinct marks)."""
        order = self.order()
        with_self: dict[str, dict[Hashable, tuple[list[str], int]]] = {}
        below: dict[str, dict[Hashable, tuple[list[str], int]]] = {}
        for cid in reversed(order):
            merged: dict[Hashable, tuple[list[str], int]] = {}
            for child in self.children(cid):
                if self.nodes[child].bill_to != "parent":
                    continue
                for mark, (first, count) in with_self.pop(child, {}).items():
                    have, total = merged.get(mark, ([], 0))
                    room = keep - len(have)
                    merged[mark] = (have + first[:room] if room > 0 else have, total + count)
            below[cid] = merged
            own = dict(merged)
            for mark in marks(cid):
                have, total = own.get(mark, ([], 0))
                own[mark] = ([cid, *have][:keep], total + 1)
            with_self[cid] = own
        return below


def families(hierarchy: Hierarchy) -> Mapping[str, str]:
    """customer id -> root id, for every customer."""
    return {cid: hierarchy.root(cid) for cid in hierarchy.nodes}
