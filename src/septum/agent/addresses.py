"""Address texts for the agent's renders, through the C library's ``inet_ntop``.

The pure core formats addresses in Python (it may not import ``socket``); at 100k elements
that is a fifth of an agent's whole-table apply, and ``inet_ntop`` is 2-7x cheaper. The text
must be exactly what ``septum.render.nft.element_text`` writes (tests check it): glibc writes
IPv6 the RFC 5952 way too, except an embedded IPv4 form (``::1.2.3.4``), which falls back.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Network

from septum.model.resources import IPNetwork
from septum.render.nft import element_text

__all__ = ["address_text"]

_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_ntop = socket.inet_ntop


def address_text(n: IPNetwork) -> str:
    """``n`` as an nft set element: the address alone for a host prefix, else CIDR."""
    i = int(n.network_address)
    length = n.prefixlen
    if n.__class__ is IPv4Network:
        text = _ntop(_AF_INET, i.to_bytes(4, "big"))
        return text if length == 32 else f"{text}/{length}"
    text = _ntop(_AF_INET6, i.to_bytes(16, "big"))
    if "." in text:
        return element_text(n)
    return text if length == 128 else f"{text}/{length}"
