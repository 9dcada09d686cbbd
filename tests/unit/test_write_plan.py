"""Write planning (dynq.kv.write_plan): pure, so properties over random rings and health."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq.kv.write_plan import actor_for, choose_targets, plan_write
from dynq_client.errors import InvalidContext, NotEnoughReplicas, TooManySiblings
from dynq_client.protocol import DEFAULT_LIMITS, Limits
from dynq_client.ring import Member, new_ring
from dynq_client.versions import update


@st.composite
def situations(draw: st.DrawFn) -> tuple[str, tuple[str, ...], tuple[str, ...], int, set[str]]:
    """A key's preference list in a random cluster, which nodes are up, and who coordinates."""
    size = draw(st.integers(1, 7))
    n = draw(st.integers(1, min(size, 5)))
    members = [Member(f"n{i}", f"tcp://127.0.0.1:{7000 + i}") for i in range(size)]
    ring = new_ring(members, q=8, n=n)
    plist = ring.preference_list(draw(st.integers(0, 7)))
    names = [m.name for m in members]
    down = set(draw(st.lists(st.sampled_from(names), unique=True)))
    coordinator = draw(st.sampled_from(names))
    down.discard(coordinator)  # a node sees itself up
    return coordinator, plist.primaries, plist.fallbacks, n, down


@settings(max_examples=300, deadline=None)
@given(situations())
def test_targets_hold_the_coordinator_n_healthy_nodes_and_stand_ins(
        situation: tuple[str, tuple[str, ...], tuple[str, ...], int, set[str]]) -> None:
    """The coordinator is always a target; there are min(N, healthy) distinct targets;
    primaries are unhinted, and each fallback's hint names a distinct primary that is not
    itself a target."""
    name, primaries, fallbacks, n, down = situation
    up = lambda node: node not in down  # noqa: E731
    targets = choose_targets(name, primaries, fallbacks, n, up)
    nodes = [node for node, _ in targets]
    assert name in nodes
    assert len(nodes) == len(set(nodes))
    healthy = [x for x in primaries + fallbacks if up(x)]
    assert len(targets) == min(n, len(healthy))
    assert all(node == name or up(node) for node in nodes)
    hints = [hint for node, hint in targets if hint is not None]
    assert len(hints) == len(set(hints)) and set(hints) <= set(primaries)
    for node, hint in targets:
        if hint is None:
            assert node in primaries
        else:
            assert hint not in nodes


@settings(max_examples=200, deadline=None)
@given(situations())
def test_all_primaries_up_means_no_hints(situation: tuple[str, tuple[str, ...], tuple[str, ...], int, set[str]]
                                         ) -> None:
    """While every primary is up (and this node is one), the targets are the primaries."""
    name, primaries, fallbacks, n, _ = situation
    if name not in primaries:
        name = primaries[0]
    targets = choose_targets(name, primaries, fallbacks, n, lambda node: True)
    assert targets == [(p, None) for p in primaries]


def test_a_coordinator_with_every_primary_down_stands_in_for_one() -> None:
    """Its dot must be durable here first, so it joins as the fallback of an uncovered primary."""
    targets = choose_targets("f1", ("a", "b", "c"), ("f1", "f2", "f3"), 3, lambda node: node.startswith("f"))
    assert targets[0][0] == "f1" and targets[0][1] in {"a", "b", "c"}
    assert sorted(h for _, h in targets if h) == ["a", "b", "c"]
    # not a fallback in the list at all (all three others taken): it takes the last one's place
    targets = choose_targets("x", ("a", "b", "c"), ("f1", "f2", "f3", "x"), 3, lambda node: node != "a" and node != "b"
                             and node != "c")
    assert [node for node, _ in targets] == ["x", "f1", "f2"] and targets[0][1] == "c"


@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_actor_for_never_reuses_an_actor_after_a_drop(forgets: list[bool]) -> None:
    """After each drop (forgotten), a fresh actor nobody minted with; otherwise the newest
    of this node's actors in the local clock, so its dots stay in one history."""
    counter = itertools.count(1)
    used: list[str] = []
    local = None
    for forgotten in forgets:
        actor = actor_for("A", local, forgotten, lambda: next(counter))
        if forgotten:
            assert actor not in used
        else:
            assert actor == (used[-1] if used and local is not None else "A")
        used.append(actor)
        local = update(local, dict(local.clock) if local else {}, actor, b"v", 1)


def plan(**kw: object) -> object:
    args: dict[str, object] = dict(
        targets=[("a", None), ("b", None), ("c", None)], fallbacks=("d", "e"), pending=("e",),
        is_up=lambda node: node != "d", down=lambda: ["d"], local=None, context={}, actor="a", value=b"v",
        now_ms=1, w=2, limits=DEFAULT_LIMITS, many_siblings=lambda n: None,
    )
    args.update(kw)
    return plan_write(**args)  # type: ignore[arg-type]


def test_plan_names_spares_and_incoming_replicas() -> None:
    """Spares are the healthy unused fallbacks; incoming replicas are not targets."""
    result = plan()
    assert result.spares == ["e"] and result.incoming == ["e"]  # type: ignore[attr-defined]
    assert result.obj.values == [b"v"]  # type: ignore[attr-defined]


def test_plan_refuses_too_few_targets_and_says_who_is_down() -> None:
    with pytest.raises(NotEnoughReplicas) as err:
        plan(targets=[("a", None)], w=2)
    assert err.value.errors == {"d": "down"} and err.value.required == 2


def test_plan_checks_clock_entries_before_siblings() -> None:
    """A context naming too many actors is refused as such (and before anything else)."""
    limits = Limits(max_clock_entries=2, max_siblings=1)
    with pytest.raises(InvalidContext):
        plan(context={"x": 1, "y": 1, "z": 1}, limits=limits)
    local = update(update(None, {}, "x", b"1", 1), {}, "y", b"2", 2)  # two siblings already
    with pytest.raises(TooManySiblings):
        plan(local=local, context={}, limits=Limits(max_siblings=2))


def test_plan_reports_many_siblings() -> None:
    heard: list[int] = []
    local = update(update(None, {}, "x", b"1", 1), {}, "y", b"2", 2)
    plan(local=local, context={}, limits=Limits(sibling_warn=2), many_siblings=heard.append)
    assert heard == [3]
