"""The agent's C-backed address texts are exactly the pure core's."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from hypothesis import given
from hypothesis import strategies as st

from septum.agent.addresses import address_text
from septum.render.nft import element_text

hextets = st.lists(st.sampled_from([0, 0, 0, 1, 0xABC, 0xFFFF]), min_size=8, max_size=8)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_texts_match(address: int, length: int) -> None:
    n = IPv4Network((address, length), strict=False)
    assert address_text(n) == element_text(n)


@given(hextets, st.integers(0, 128))
def test_ipv6_texts_match(parts: list[int], length: int) -> None:
    i = 0
    for h in parts:
        i = (i << 16) | h
    n = IPv6Network((i, length), strict=False)
    assert address_text(n) == element_text(n)
