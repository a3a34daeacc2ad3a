"""The customer tree at any depth: every question linear in the number of customers, no
recursion (SPEC §2: parents form a tree of any depth)."""

from __future__ import annotations

import random
import time

from billing_core.domain.hierarchy import Hierarchy, Node


def chain(levels: int, self_billed: set[int] = frozenset()) -> Hierarchy:
    """c0 <- c1 <- ... <- c{levels-1}, each billing to its parent unless listed."""
    return Hierarchy(
        Node(
            f"c{i}",
            f"c{i - 1}" if i else None,
            "self" if i in self_billed or i == 0 else "parent",
            "USD",
        )
        for i in range(levels)
    )


def test_a_100000_level_chain_is_answered_in_linear_time():
    levels = 100_000
    started = time.monotonic()
    h = chain(levels, self_billed={50_000})
    assert h.find_cycles() == []
    last = f"c{levels - 1}"
    families = {cid: h.root(cid) for cid in h.nodes}
    depths = {cid: h.depth(cid) for cid in h.nodes}
    payers = {cid: h.billed_customer(cid, rollup=True) for cid in h.nodes}
    currencies = h.below_in_pools(lambda cid: [h.nodes[cid].currency], keep=3)
    elapsed = time.monotonic() - started
    assert set(families.values()) == {"c0"}
    assert depths[last] == levels - 1 and depths["c0"] == 0
    assert payers[last] == "c50000" and payers["c50000"] == "c0" and payers["c1"] == "c0"
    assert h.billed_customer(last, rollup=False) == last
    assert currencies["c0"]["USD"] == (["c1", "c2", "c3"], 49_999)  # c50000 pays itself
    assert currencies["c50000"]["USD"][1] == levels - 50_001
    # Walking the ancestors of each customer would take hours here; one pass takes a
    # second or two even on a busy machine.
    assert elapsed < 30, elapsed


def test_every_cycle_is_found_once():
    h = Hierarchy(
        [
            Node("a", "b", "parent", "USD"),
            Node("b", "a", "parent", "USD"),
            Node("c", "d", "parent", "USD"),
            Node("d", "e", "parent", "USD"),
            Node("e", "c", "parent", "USD"),
            Node("f", "c", "parent", "USD"),  # hangs below a cycle, is not in it
            Node("g", None, "self", "USD"),
        ]
    )
    assert h.find_cycles() == [["a", "b", "a"], ["c", "d", "e", "c"]]
    assert h.find_cycle() == ["a", "b", "a"]
    assert h.root("f") in {"c", "d", "e"}  # no endless walk below a cycle


def test_one_pass_answers_match_the_walks():
    rng = random.Random(7)
    nodes = [Node("n0", None, "self", "USD")]
    for i in range(1, 400):
        parent = f"n{rng.randrange(i)}" if rng.random() < 0.9 else None
        bill_to = "parent" if rng.random() < 0.7 else "self"
        nodes.append(Node(f"n{i}", parent, bill_to, rng.choice(["USD", "EUR"])))
    h = Hierarchy(nodes)
    marks = {n.id: [n.currency] for n in nodes}
    below = h.below_in_pools(lambda cid: marks[cid], keep=4)
    for node in nodes:
        walk = h.ancestors(node.id)
        assert h.depth(node.id) == len(walk)
        assert h.root(node.id) == (walk[-1] if walk else node.id)
        for rollup in (True, False):
            expected = node.id
            if rollup and node.parent_id is not None:
                expected = node.parent_id
                while h.nodes[expected].bill_to == "parent" and h.parent(expected):
                    expected = h.parent(expected)
            assert h.billed_customer(node.id, rollup) == expected
        members = h.bills_through(node.id)[1:]
        for currency in ("USD", "EUR"):
            carrying = [m for m in members if h.nodes[m].currency == currency]
            assert below[node.id].get(currency, ([], 0)) == (carrying[:4], len(carrying)) or (
                not carrying and currency not in below[node.id]
            )
    order = h.order()
    assert len(order) == len(nodes)
    position = {cid: i for i, cid in enumerate(order)}
    assert all(position[n.parent_id] < position[n.id] for n in nodes if n.parent_id)
