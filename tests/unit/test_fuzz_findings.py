"""Inputs the atheris campaign (fuzz/atheris_decoders.py) found to raise something other
than the error their callers catch; each must now be refused with that error."""

from __future__ import annotations

import pytest

from dynq.cluster.membership import ClusterState, MembershipError, Staged, member_from_wire
from dynq_client.errors import ProtocolError
from dynq_client.protocol import decode_reply, unpackb
from dynq_client.ring import Ring, RingError
from dynq_client.routing import RoutingTable

RING = b"\x85\xa5epoch\x00\xa1q\x01\xa1n\x01\xa7members\x91\x94\xa1a\xa0\xa0\x01\xa6owners\x91\xa1a"  # q=1, member "a"
DEEP = b"\x91" * 1000 + b"\xc0"  # nil inside 1000 one-element arrays: msgpack takes it, repr() does not


def test_a_transfer_naming_a_list_is_a_membership_error() -> None:
    data = unpackb(b"\x83\xa4ring" + RING + b"\xa4next" + RING + b"\xa9transfers\x91\x93\x00\x90\xa1a")
    with pytest.raises(MembershipError, match="bad transfer"):
        ClusterState.from_wire(data)


def test_a_deep_version_in_a_reply_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="protocol version"):
        decode_reply(b"\x83\xa2id\x01\xa2ok\xc3\xa1v" + DEEP)


@pytest.mark.parametrize("raw", [
    b"\x85\xa5epoch" + DEEP + b"\xa1q\x01\xa1n\x01\xa7members\x90\xa6owners\x90",
    b"\x85\xa5epoch\x00\xa1q\x01\xa1n\x01\xa7members\x91" + DEEP + b"\xa6owners\x90",
    b"\x85\xa5epoch\x00\xa1q\x01\xa1n\x01\xa7members\x91\x94\xa1a\xa0\xa0\x01\xa6owners\x91" + DEEP,
])
def test_deep_values_in_a_ring_are_ring_errors(raw: bytes) -> None:
    with pytest.raises(RingError):
        Ring.from_wire(unpackb(raw))


def test_a_deep_value_in_a_routing_table_is_a_protocol_error() -> None:
    data = unpackb(b"\x81\xa4ring\x85\xa5epoch" + DEEP + b"\xa1q\x01\xa1n\x01\xa7members\x90\xa6owners\x90")
    with pytest.raises(ProtocolError, match="invalid ring"):
        RoutingTable.from_wire(data)


@pytest.mark.parametrize("raw", [
    b"\x83\xa4ring" + RING + b"\xa4next" + RING + b"\xa9transfers\x91" + DEEP,
])
def test_a_deep_transfer_is_a_membership_error(raw: bytes) -> None:
    with pytest.raises(MembershipError):
        ClusterState.from_wire(unpackb(raw))


def test_deep_members_are_membership_errors() -> None:
    with pytest.raises(MembershipError):
        member_from_wire(unpackb(DEEP))
    with pytest.raises(MembershipError):
        Staged.from_wire(unpackb(b"\x81\xa5joins\x91" + DEEP))
