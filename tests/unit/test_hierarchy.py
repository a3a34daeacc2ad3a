from billing_core.domain.hierarchy import Hierarchy, Node


def tree(*nodes):
    return Hierarchy(Node(i, p, b, "USD") for i, p, b in nodes)


def test_cycles_are_found():
    h = tree(("east", "west", "parent"), ("west", "east", "parent"))
    cycle = h.find_cycle()
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"east", "west"}


def test_billed_customer_climbs_while_bill_to_is_parent():
    h = tree(
        ("top", None, "self"),
        ("mid", "top", "parent"),
        ("leaf", "mid", "parent"),
        ("own", "top", "self"),
        ("under-own", "own", "parent"),
    )
    assert h.billed_customer("leaf", rollup=True) == "top"
    assert h.billed_customer("leaf", rollup=False) == "leaf"
    assert h.billed_customer("under-own", rollup=True) == "own"
    assert h.billed_customer("top", rollup=True) == "top"


def test_pool_reaches_only_through_bill_to_parent_chains():
    h = tree(
        ("hq", None, "self"),
        ("a", "hq", "parent"),
        ("b", "hq", "self"),
        ("a1", "a", "parent"),
        ("b1", "b", "parent"),
    )
    assert h.bills_through("hq") == ["hq", "a", "a1"]
    assert h.root("b1") == "hq"
