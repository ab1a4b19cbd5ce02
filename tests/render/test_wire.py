"""The wire codec: lossless round trips of real and random rulesets and deltas, strict and
total decoding with locations.

Round trips cover every enforcer of ``examples/``, fail-closed tables, a generated estate and
its address churn, random repositories (``septum.testing.strategies``) and random rulesets
built directly from the data classes. Decoding is fuzzed with random JSON values and with
single mutations of well-formed messages: it either returns a ruleset or raises WireError.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import EXAMPLES, EXAMPLES_AT

from septum.engine.resolve import resolve_policy
from septum.errors import SeptumError
from septum.model.resources import Direction, IPNetwork, PortRange, Protocol, Repository
from septum.render import wire
from septum.render.compile import build_all
from septum.render.hostruleset import (
    AddrField,
    AddrMatch,
    Chain,
    CtStateMatch,
    Dispatch,
    ElementDelta,
    Family,
    Hook,
    HostRuleset,
    IfaceMatch,
    LogStatement,
    MapElement,
    Match,
    NamedSet,
    NeighborDiscoveryMatch,
    NftRule,
    NftSettings,
    PortMatch,
    ProtoMatch,
    Provenance,
    SetType,
    Verdict,
    VerdictMap,
    build_fail_closed_ruleset,
    build_host_ruleset,
    diff_rulesets,
)
from septum.render.nft import render_nft, render_set_delta
from septum.render.wire import (
    WIRE_VERSION,
    WireError,
    decode_deltas,
    decode_ruleset,
    encode_deltas,
    encode_ruleset,
)
from septum.sources.files import load_repository
from septum.testing.builders import T0, failsafe
from septum.testing.estate import address_changes, apply_changes, generate_estate
from septum.testing.strategies import repositories

# ------------------------------------------------------------------------------- helpers


def _json_only(value: object, path: str = "") -> None:
    """``value`` holds nothing but dicts with string keys, lists, str, int, bool and None."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), path
            _json_only(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _json_only(v, f"{path}[{i}]")
    else:
        assert value is None or isinstance(value, str | int | bool), (path, type(value))


def _round_trip(r: HostRuleset) -> HostRuleset:
    encoded = encode_ruleset(r)
    _json_only(encoded)
    back = decode_ruleset(json.loads(json.dumps(encoded)))
    assert back == r
    assert decode_ruleset(encoded) == r  # also straight from the dicts, without JSON text
    return back


def _assert_same_types(a: HostRuleset, b: HostRuleset) -> None:
    """Equal rulesets whose addresses also have the same classes (IPv4Network is never equal
    to an IPv6Network, but be explicit) and whose enums are the same members."""
    for sa, sb in zip(a.sets, b.sets, strict=True):
        assert [type(e) for e in sa.elements] == [type(e) for e in sb.elements]
        assert sa.type is sb.type
    for ma, mb in zip(a.maps, b.maps, strict=True):
        assert [type(e.key) for e in ma.elements] == [type(e.key) for e in mb.elements]


def _deltas_round_trip(deltas: tuple[ElementDelta, ...]) -> None:
    encoded = encode_deltas(deltas)
    _json_only(encoded)
    assert decode_deltas(json.loads(json.dumps(encoded))) == deltas
    assert decode_deltas(encoded) == deltas


def _error(data: object, *, deltas: bool = False) -> WireError:
    with pytest.raises(WireError) as info:
        decode_deltas(data) if deltas else decode_ruleset(data)
    return info.value


# ------------------------------------------------------------------------------- real rulesets

EXAMPLES_REPO = load_repository(EXAMPLES)
EXAMPLES_RESOLVED = resolve_policy(EXAMPLES_REPO, EXAMPLES_AT)


@pytest.mark.parametrize("enforcer", EXAMPLES_REPO.enforcers())
def test_every_examples_ruleset_round_trips(enforcer: str) -> None:
    r = build_host_ruleset(EXAMPLES_RESOLVED, enforcer)
    back = _round_trip(r)
    _assert_same_types(r, back)
    assert render_nft(back) == render_nft(r)


def test_examples_cover_every_match_and_field() -> None:
    """The examples exercise the variants (so the round trips above mean something)."""
    rulesets = [build_host_ruleset(EXAMPLES_RESOLVED, e) for e in EXAMPLES_REPO.enforcers()]
    kinds = {type(m) for r in rulesets for c in r.chains for rule in c.rules for m in rule.matches}
    assert {AddrMatch, PortMatch, CtStateMatch, IfaceMatch, NeighborDiscoveryMatch} <= kinds
    rules = [rule for r in rulesets for c in r.chains for rule in c.rules]
    assert any(rule.log is not None for rule in rules)
    assert any(rule.dispatch is not None for rule in rules)
    assert any(not rule.counter for rule in rules)
    assert any(m.elements for r in rulesets for m in r.maps)
    assert any(s.interval for r in rulesets for s in r.sets)


def test_ruleset_of_an_unknown_enforcer_round_trips() -> None:
    r = build_host_ruleset(EXAMPLES_RESOLVED, "nobody")
    assert _round_trip(r) == r


@pytest.mark.parametrize(
    "entries",
    [
        (),
        (
            failsafe("ingress", "tcp/22", cidrs=["198.18.255.0/24", "2001:db8:ff::/48"]),
            failsafe("egress", "tcp/8443", "udp/53", cidrs=["198.19.254.10/32"]),
            failsafe(None, "icmp"),
        ),
    ],
    ids=["empty", "entries"],
)
def test_fail_closed_rulesets_round_trip(entries: tuple[Any, ...]) -> None:
    plain = build_fail_closed_ruleset("h1", entries, EXAMPLES_AT)
    tuned = build_fail_closed_ruleset(
        "h1",
        entries,
        T0,
        NftSettings(table="septum_test", deny_group=7, priority=-10),
    )
    examples = build_fail_closed_ruleset("h2", EXAMPLES_REPO.settings.failsafe, EXAMPLES_AT)
    for r in (plain, tuned, examples):
        back = _round_trip(r)
        assert render_nft(back) == render_nft(r)


def test_the_docstring_example_is_what_the_encoder_writes() -> None:
    encoded = encode_ruleset(build_fail_closed_ruleset("h1", (), EXAMPLES_AT))
    assert {k: encoded[k] for k in ("version", "enforcer", "at", "table", "family")} == {
        "version": 1,
        "enforcer": "h1",
        "at": "2026-11-25T12:00:00+00:00",
        "table": "septum",
        "family": "inet",
    }
    assert encoded["sets"] == encoded["maps"] == []
    first = encoded["chains"][0]
    assert (first["name"], first["hook"], first["comment"]) == (
        "input",
        "input",
        "fail-closed: no policy yet",
    )
    assert first["rules"][0] == {
        "matches": [{"match": "ct_state", "states": ["established", "related"]}],
        "verdict": "accept",
        "provenance": {"note": "established"},
    }
    assert wire.__doc__ is not None
    assert '"version": 1' in wire.__doc__
    assert WIRE_VERSION == 1


ESTATE = generate_estate(7, workloads=600, policies=120, enforcers=6, ipv6_fraction=0.3)


def test_estate_rulesets_round_trip_and_share_address_objects() -> None:
    resolved = resolve_policy(ESTATE, T0)
    for enforcer in ESTATE.enforcers():
        r = build_host_ruleset(resolved, enforcer)
        back = _round_trip(r)
        assert render_nft(back) == render_nft(r)
        # one object per distinct address in the decoded ruleset
        by_value: dict[IPNetwork, IPNetwork] = {}
        held = [e for s in back.sets for e in s.elements]
        held += [e.key for m in back.maps for e in m.elements]
        held += [
            n
            for c in back.chains
            for rule in c.rules
            for m in rule.matches
            if isinstance(m, AddrMatch)
            for n in m.ranges
        ]
        assert held
        for n in held:
            assert by_value.setdefault(n, n) is n


def test_estate_address_churn_deltas_round_trip() -> None:
    before = resolve_policy(ESTATE, T0)
    after = resolve_policy(apply_changes(ESTATE, address_changes(ESTATE, 3, 40)), T0)
    seen_map_delta = False
    for enforcer in ESTATE.enforcers():
        old = build_host_ruleset(before, enforcer)
        new = build_host_ruleset(after, enforcer)
        delta = diff_rulesets(old, new)
        _deltas_round_trip(delta.elements)
        back = decode_deltas(encode_deltas(delta.elements))
        names = {s.name for s in new.sets} | {m.name for m in new.maps}
        assert render_set_delta(names, back) == render_set_delta(names, delta.elements)
        seen_map_delta |= any(
            isinstance(e, MapElement) for d in delta.elements for e in d.added + d.removed
        )
    assert seen_map_delta


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repositories(), repositories())
def test_random_repositories_round_trip_with_their_deltas(a: Repository, b: Repository) -> None:
    ra, rb = resolve_policy(a, T0), resolve_policy(b, T0)
    for enforcer in sorted({*a.enforcers(), *b.enforcers(), "nobody"}):
        old = build_host_ruleset(ra, enforcer)
        new = build_host_ruleset(rb, enforcer)
        for r in (old, new):
            back = _round_trip(r)
            assert render_nft(back) == render_nft(r)
        _deltas_round_trip(diff_rulesets(old, new).elements)
        _deltas_round_trip(diff_rulesets(new, old).elements)


# ------------------------------------------------------------------------------- random rulesets

_IDENTS = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
_TEXT = st.text(max_size=12)
_FREE_TEXT = st.none() | _TEXT


def _v4() -> st.SearchStrategy[IPv4Network]:
    return st.builds(
        lambda a, p: IPv4Network((a >> (32 - p) << (32 - p), p)),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def _v6() -> st.SearchStrategy[IPv6Network]:
    plain = st.builds(
        lambda a, p: IPv6Network((a >> (128 - p) << (128 - p), p)),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    )
    scoped = st.builds(
        lambda a, zone: IPv6Network(f"{IPv6Address(a)}%{zone}/128"),
        st.integers(0xFE80 << 112, (0xFE80 << 112) + 2**64),
        st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True),
    )
    mapped = st.builds(lambda a: IPv6Network(((0xFFFF << 32) | a, 128)), st.integers(0, 2**32 - 1))
    return plain | scoped | mapped


def _nets(family: Family, max_size: int = 6) -> st.SearchStrategy[tuple[IPNetwork, ...]]:
    nets: st.SearchStrategy[IPNetwork] = _v4() if family is Family.IP else _v6()
    return st.lists(nets, max_size=max_size).map(tuple)


@st.composite
def _addr_matches(draw: st.DrawFn) -> AddrMatch:
    family = draw(st.sampled_from(Family))
    return AddrMatch(
        family,
        draw(st.sampled_from(AddrField)),
        draw(st.none() | _IDENTS),
        draw(_nets(family)),
        draw(st.booleans()),
    )


def _port_ranges() -> st.SearchStrategy[PortRange]:
    return st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(
        lambda t: PortRange(min(t), max(t))
    )


_MATCHES: st.SearchStrategy[Match] = st.one_of(
    _addr_matches(),
    st.builds(
        PortMatch,
        st.lists(st.tuples(st.sampled_from(Protocol), _port_ranges()), max_size=3).map(tuple),
    ),
    st.builds(ProtoMatch, st.lists(st.sampled_from(Protocol), max_size=3).map(tuple)),
    st.builds(
        CtStateMatch,
        st.lists(
            st.sampled_from(("new", "established", "related", "invalid", "untracked")),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(
        IfaceMatch,
        st.sampled_from(("iif", "oif")),
        st.from_regex(r"[a-z][a-z0-9_.-]{0,14}", fullmatch=True),
    ),
    st.just(NeighborDiscoveryMatch()),
)

_PROVENANCES = st.builds(
    Provenance,
    _FREE_TEXT,
    _FREE_TEXT,
    st.none() | st.sampled_from(Direction),
    st.none() | st.integers(),
    _FREE_TEXT,
)

_RULES = st.builds(
    NftRule,
    st.lists(_MATCHES, max_size=3).map(tuple),
    st.sampled_from(Verdict),
    _PROVENANCES,
    target=st.none() | _IDENTS,
    log=st.none() | st.builds(LogStatement, st.integers(0, 65535), _TEXT),
    dispatch=st.none()
    | st.builds(Dispatch, st.sampled_from(Family), st.sampled_from(AddrField), _IDENTS),
    counter=st.booleans(),
)

_CHAINS = st.builds(
    Chain,
    _IDENTS,
    st.lists(_RULES, max_size=4).map(tuple),
    hook=st.none() | st.sampled_from(Hook),
    priority=st.integers(-400, 400),
    comment=_FREE_TEXT,
)


@st.composite
def _named_sets(draw: st.DrawFn) -> NamedSet:
    family = draw(st.sampled_from(Family))
    stype = SetType.IPV4 if family is Family.IP else SetType.IPV6
    return NamedSet(
        draw(_IDENTS),
        stype,
        draw(st.booleans()),
        draw(_nets(family, 10)),
        comment=draw(_FREE_TEXT),
    )


@st.composite
def _verdict_maps(draw: st.DrawFn) -> VerdictMap:
    family = draw(st.sampled_from(Family))
    stype = SetType.IPV4 if family is Family.IP else SetType.IPV6
    keys = draw(_nets(family, 10))
    elements = tuple(MapElement(k, draw(_IDENTS)) for k in keys)
    return VerdictMap(draw(_IDENTS), stype, elements, comment=draw(_FREE_TEXT))


_OFFSETS = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
)
_ZONES: st.SearchStrategy[tzinfo | None] = st.one_of(
    st.none(), st.just(UTC), st.builds(timezone, _OFFSETS)
)
_TIMES = st.just(datetime.min) | st.builds(
    lambda d, zone: d.replace(tzinfo=zone),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1)),
    _ZONES,
)
_ENFORCERS = st.text(max_size=12).filter(
    lambda s: not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in s)
)

_RULESETS = st.builds(
    HostRuleset,
    _ENFORCERS,
    _TIMES,
    st.lists(_CHAINS, max_size=4).map(tuple),
    st.lists(_named_sets(), max_size=3).map(tuple),
    st.lists(_verdict_maps(), max_size=3).map(tuple),
    table=_IDENTS,
    family=st.sampled_from(("inet", "ip", "ip6", "bridge")),
)


@st.composite
def _element_deltas(draw: st.DrawFn) -> ElementDelta:
    family = draw(st.sampled_from(Family))

    def elements() -> tuple[Any, ...]:
        nets = draw(_nets(family))
        return tuple(MapElement(n, draw(_IDENTS)) if draw(st.booleans()) else n for n in nets)

    return ElementDelta(draw(_IDENTS), elements(), elements())


@settings(max_examples=300)
@given(_RULESETS)
def test_random_rulesets_round_trip(r: HostRuleset) -> None:
    back = _round_trip(r)
    _assert_same_types(r, back)
    assert back.at.isoformat() == r.at.isoformat()


@settings(max_examples=200)
@given(st.lists(_element_deltas(), max_size=4).map(tuple))
def test_random_deltas_round_trip(deltas: tuple[ElementDelta, ...]) -> None:
    _deltas_round_trip(deltas)
    back = decode_deltas(encode_deltas(deltas))
    for a, b in zip(deltas, back, strict=True):
        assert [type(e) for e in a.added + a.removed] == [type(e) for e in b.added + b.removed]


# ------------------------------------------------------------------------------- format details


def _small() -> HostRuleset:
    v4 = IPv4Network("198.18.0.1/32")
    return HostRuleset(
        enforcer="h1",
        at=T0,
        chains=(
            Chain(
                "input",
                (
                    NftRule(
                        (
                            AddrMatch(Family.IP, AddrField.SADDR, "s_x_v4", negate=True),
                            PortMatch(((Protocol.TCP, PortRange(443, 443)),)),
                        ),
                        Verdict.GOTO,
                        Provenance("t", "p", Direction.INGRESS, 0),
                        target="w_x_in",
                    ),
                ),
                hook=Hook.INPUT,
            ),
            Chain("w_x_in", (NftRule((), Verdict.ACCEPT, Provenance(note="n")),)),
        ),
        sets=(NamedSet("s_x_v4", SetType.IPV4, False, (v4,)),),
        maps=(VerdictMap("ingress_v4", SetType.IPV4, (MapElement(v4, "w_x_in"),)),),
    )


def _small_doc() -> dict[str, Any]:
    return encode_ruleset(_small())


def test_the_encoding_is_compact_and_explicit() -> None:
    doc = _small_doc()
    assert doc["sets"] == [{"name": "s_x_v4", "type": "ipv4_addr", "interval": False,
                            "elements": ["198.18.0.1/32"]}]  # fmt: skip
    assert doc["maps"] == [
        {"name": "ingress_v4", "type": "ipv4_addr", "elements": [["198.18.0.1/32", "w_x_in"]]}
    ]
    rule = doc["chains"][0]["rules"][0]
    assert rule == {
        "matches": [
            {"match": "addr", "family": "ip", "field": "saddr", "set_name": "s_x_v4",
             "negate": True},
            {"match": "port", "entries": [["tcp", 443, 443]]},
        ],
        "verdict": "goto",
        "provenance": {"tier": "t", "policy": "p", "direction": "ingress", "index": 0},
        "target": "w_x_in",
    }  # fmt: skip
    assert doc["chains"][1] == {
        "name": "w_x_in",
        "rules": [{"matches": [], "verdict": "accept", "provenance": {"note": "n"}}],
    }


def test_optional_keys_may_be_written_out_with_their_defaults_or_null() -> None:
    doc = _small_doc()
    chain = doc["chains"][1]
    chain.update(hook=None, priority=0, comment=None)
    chain["rules"][0].update(target=None, log=None, dispatch=None, counter=True)
    chain["rules"][0]["provenance"].update(tier=None, policy=None, direction=None, index=None)
    doc["sets"][0]["comment"] = None
    doc["maps"].append({"name": "egress_v6", "type": "ipv6_addr", "elements": []})
    doc["chains"][0]["rules"][0]["matches"][0].update(ranges=[])
    r = decode_ruleset(doc)
    want = _small()
    assert r == HostRuleset(
        want.enforcer,
        want.at,
        want.chains,
        want.sets,
        (*want.maps, VerdictMap("egress_v6", SetType.IPV6)),
    )


def test_wire_error_is_a_septum_error_with_a_location() -> None:
    e = _error({"version": 1})
    assert isinstance(e, SeptumError)
    assert e.location == "enforcer"
    assert e.message == "missing"
    assert str(e) == "enforcer: missing"
    assert str(_error([])) == "message: expected an object, got a list"


def test_public_surface() -> None:
    assert sorted(wire.__all__) == [
        "PartEncoder",
        "WIRE_VERSION",
        "WireError",
        "assemble_ruleset",
        "decode_deltas",
        "decode_ruleset",
        "decode_set_part",
        "encode_deltas",
        "encode_ruleset",
        "ruleset_header",
    ]


def test_rulesets_assembled_from_shared_parts_equal_the_whole_encoding() -> None:
    """``PartEncoder`` + ``assemble_ruleset`` (parts encoded once, shared by every ruleset
    that holds them) decode to what ``encode_ruleset`` decodes to, for every enforcer."""
    rulesets = build_all(EXAMPLES_RESOLVED, EXAMPLES_REPO.enforcers())
    parts = wire.PartEncoder()
    for r in rulesets.values():
        message = wire.assemble_ruleset(
            wire.ruleset_header(r),
            [parts.part(c) for c in r.chains],
            [parts.part(x) for x in r.sets],
            [parts.part(m) for m in r.maps],
        )
        assembled = json.loads(message)
        assert assembled == json.loads(json.dumps(encode_ruleset(r)))
        assert decode_ruleset(assembled) == r
        for part in (*r.sets, *r.maps):
            assert wire.decode_set_part(json.loads(parts.part(part))) == part


# ------------------------------------------------------------------------------- strictness


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


def _delete(doc: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    return doc


R0 = ("chains", 0, "rules", 0)
M0 = (*R0, "matches", 0)
M1 = (*R0, "matches", 1)

STRICT_CASES: list[tuple[str, tuple[Any, ...], object, str, str]] = [
    # (id, path, new value, location, message fragment)
    ("version", ("version",), 2, "version", "unsupported wire version 2"),
    ("version-type", ("version",), "1", "version", "unsupported wire version '1'"),
    ("version-bool", ("version",), True, "version", "unsupported wire version a boolean"),
    ("unknown-top", ("extra",), 1, "extra", "unknown key"),
    ("unknown-deep", (*M1, "colour"), "red", "chains[0].rules[0].matches[1].colour",
     "unknown key"),
    ("enforcer-type", ("enforcer",), 3, "enforcer", "expected a string, got an integer"),
    ("enforcer-newline", ("enforcer",), "h1\nflush ruleset", "enforcer", "control character"),
    ("at-format", ("at",), "2026-11-01 12:00", "at", "datetime.isoformat()"),
    ("at-garbage", ("at",), "yesterday", "at", "datetime.isoformat()"),
    ("table-ident", ("table",), "septum; flush ruleset", "table", "nft identifier"),
    ("chains-type", ("chains",), {}, "chains", "expected a list, got an object"),
    ("chain-type", ("chains", 1), [], "chains[1]", "expected an object, got a list"),
    ("chain-name", ("chains", 1, "name"), "w x", "chains[1].name", "nft identifier"),
    ("hook", ("chains", 0, "hook"), "prerouting", "chains[0].hook",
     "expected one of 'input', 'output', 'forward', got 'prerouting'"),
    ("priority-bool", ("chains", 0, "priority"), False, "chains[0].priority",
     "expected an integer, got a boolean"),
    ("priority-float", ("chains", 0, "priority"), 1.0, "chains[0].priority",
     "expected an integer, got a number"),
    ("comment", ("chains", 0, "comment"), ["x"], "chains[0].comment",
     "expected a string or null, got a list"),
    ("verdict", (*R0, "verdict"), "reject", "chains[0].rules[0].verdict", "got 'reject'"),
    ("verdict-null", (*R0, "verdict"), None, "chains[0].rules[0].verdict", "got null"),
    ("target", (*R0, "target"), "a b", "chains[0].rules[0].target", "nft identifier"),
    ("counter", (*R0, "counter"), 1, "chains[0].rules[0].counter",
     "expected a boolean, got an integer"),
    ("provenance", (*R0, "provenance"), None, "chains[0].rules[0].provenance",
     "expected an object, got null"),
    ("provenance-index", (*R0, "provenance", "index"), "0",
     "chains[0].rules[0].provenance.index", "expected an integer or null, got a string"),
    ("direction", (*R0, "provenance", "direction"), "both",
     "chains[0].rules[0].provenance.direction", "got 'both'"),
    ("log", (*R0, "log"), {"group": 1}, "chains[0].rules[0].log.prefix", "missing"),
    ("dispatch", (*R0, "dispatch"), {"family": "inet", "field": "saddr", "map_name": "m"},
     "chains[0].rules[0].dispatch.family", "got 'inet'"),
    ("matches", (*R0, "matches"), None, "chains[0].rules[0].matches",
     "expected a list, got null"),
    ("match-tag", (*M0, "match"), "geoip", "chains[0].rules[0].matches[0].match",
     "got 'geoip'"),
    ("match-untagged", M0, {"family": "ip"}, "chains[0].rules[0].matches[0].match", "missing"),
    ("match-field", (*M0, "field"), "sport", "chains[0].rules[0].matches[0].field",
     "got 'sport'"),
    ("match-negate", (*M0, "negate"), "yes", "chains[0].rules[0].matches[0].negate",
     "expected a boolean"),
    ("match-set", (*M0, "set_name"), "@s", "chains[0].rules[0].matches[0].set_name",
     "nft identifier"),
    ("ranges-family", (*M0, "ranges"), ["198.18.0.0/15", "2001:db8::/32"],
     "chains[0].rules[0].matches[0].ranges[1]", "an IPv6 network in a match of family 'ip'"),
    ("ranges-bad", (*M0, "ranges"), ["198.18.0.0/15", "198.18.0.0/33"],
     "chains[0].rules[0].matches[0].ranges[1]", "'198.18.0.0/33'"),
    ("port-entry", (*M1, "entries", 0), ["tcp", 443], "chains[0].rules[0].matches[1].entries[0]",
     "[protocol, first, last]"),
    ("port-proto", (*M1, "entries", 0, 0), "gre",
     "chains[0].rules[0].matches[1].entries[0][0]", "got 'gre'"),
    ("port-range", (*M1, "entries", 0, 2), 65536,
     "chains[0].rules[0].matches[1].entries[0][2]", "out of range 0..65535"),
    ("port-negative", (*M1, "entries", 0, 1), -1,
     "chains[0].rules[0].matches[1].entries[0][1]", "out of range 0..65535"),
    ("port-empty", (*M1, "entries", 0, 1), 444,
     "chains[0].rules[0].matches[1].entries[0]", "port range 444-443 is empty"),
    ("port-huge", (*M1, "entries", 0, 1), 10**400,
     "chains[0].rules[0].matches[1].entries[0][1]", "port an integer out of range"),
    ("proto", M1, {"match": "proto", "protocols": ["tcp", "esp"]},
     "chains[0].rules[0].matches[1].protocols[1]", "got 'esp'"),
    ("ct", M1, {"match": "ct_state", "states": ["new", "new,invalid"]},
     "chains[0].rules[0].matches[1].states[1]", "got 'new,invalid'"),
    ("iface-field", M1, {"match": "iface", "field": "iifname", "name": "lo"},
     "chains[0].rules[0].matches[1].field", "'iif' or 'oif'"),
    ("iface-name", M1, {"match": "iface", "field": "iif", "name": "a" * 16},
     "chains[0].rules[0].matches[1].name", "at most 15"),
    ("nd-extra", M1, {"match": "neighbor_discovery", "hoplimit": 255},
     "chains[0].rules[0].matches[1].hoplimit", "unknown key"),
    ("set-type", ("sets", 0, "type"), "inet_service", "sets[0].type", "got 'inet_service'"),
    ("set-interval", ("sets", 0, "interval"), None, "sets[0].interval",
     "expected a boolean, got null"),
    ("set-interval-missing", ("sets", 0, "interval"), ..., "sets[0].interval", "missing"),
    ("set-elements", ("sets", 0, "elements"), "198.18.0.1/32", "sets[0].elements",
     "expected a list, got a string"),
    ("host-bits", ("sets", 0, "elements", 0), "198.18.0.1/24", "sets[0].elements[0]",
     "host bits set"),
    ("no-prefix", ("sets", 0, "elements", 0), "198.18.0.1", "sets[0].elements[0]",
     "with its prefix length"),
    ("leading-zero", ("sets", 0, "elements", 0), "198.018.0.1/32", "sets[0].elements[0]",
     "as str() writes it"),
    ("netmask", ("sets", 0, "elements", 0), "198.18.0.1/255.255.255.255",
     "sets[0].elements[0]", "as str() writes it"),
    ("octet", ("sets", 0, "elements", 0), "198.18.0.256/32", "sets[0].elements[0]",
     "as str() writes it"),
    ("unicode-digit", ("sets", 0, "elements", 0), "198.18.0.\u0661/32", "sets[0].elements[0]",
     "as str() writes it"),
    ("v6-no-prefix", ("sets", 0, "elements", 0), "2001:db8::1", "sets[0].elements[0]",
     "with its prefix length"),
    ("v6-bad", ("sets", 0, "elements", 0), "2001:db8::g/128", "sets[0].elements[0]",
     "'2001:db8::g/128'"),
    ("v6-in-v4-set", ("sets", 0, "elements", 0), "2001:db8::1/128", "sets[0].elements[0]",
     "an IPv6 network in a set of type 'ipv4_addr'"),
    ("element-int", ("sets", 0, "elements", 0), 3323068417, "sets[0].elements[0]",
     "expected an address text"),
    ("map-pair", ("maps", 0, "elements", 0), "198.18.0.1/32", "maps[0].elements[0]",
     "[address, chain] pair"),
    ("map-triple", ("maps", 0, "elements", 0), ["198.18.0.1/32", "w_x_in", "x"],
     "maps[0].elements[0]", "[address, chain] pair"),
    ("map-chain", ("maps", 0, "elements", 0, 1), "goto x", "maps[0].elements[0][1]",
     "nft identifier"),
    ("map-chain-type", ("maps", 0, "elements", 0, 1), None, "maps[0].elements[0][1]",
     "expected a chain name, got null"),
    ("map-key", ("maps", 0, "elements", 0, 0), "198.18.0.1/3x", "maps[0].elements[0][0]",
     "as str() writes it"),
    ("map-family", ("maps", 0, "elements", 0, 0), "::1/128", "maps[0].elements[0][0]",
     "an IPv6 network in a map of type 'ipv4_addr'"),
    ("map-extra", ("maps", 0, "timeout"), 5, "maps[0].timeout", "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "location", "fragment"),
    [c[1:] for c in STRICT_CASES],
    ids=[c[0] for c in STRICT_CASES],
)
def test_malformed_rulesets_are_refused_with_their_location(
    path: tuple[Any, ...], value: object, location: str, fragment: str
) -> None:
    doc = _delete(_small_doc(), path) if value is ... else _set(_small_doc(), path, value)
    e = _error(doc)
    assert e.location == location
    assert fragment in e.message


@pytest.mark.parametrize("key", ["version", "enforcer", "at", "table", "family", "chains",
                                 "sets", "maps"])  # fmt: skip
def test_every_top_level_key_is_required(key: str) -> None:
    e = _error(_delete(_small_doc(), (key,)))
    assert (e.location, e.message) == (key, "missing")


def test_non_string_keys_and_odd_values_are_refused_without_showing_them() -> None:
    doc: dict[Any, Any] = _small_doc()
    doc[1] = "x"
    assert _error(doc).message == "a key is an integer, not a string"
    deep: list[Any] = []
    for _ in range(100_000):  # far deeper than repr() could show
        deep = [deep]
    e = _error(_set(_small_doc(), ("enforcer",), deep))
    assert e.message == "expected a string, got a list"
    e = _error(_set(_small_doc(), ("at",), "x" * 10_000))
    assert len(str(e)) < 200
    e = _error(_set(_small_doc(), ("enforcer",), object()))
    assert e.message == "expected a string, got a value of type object"


DELTA_CASES: list[tuple[str, object, str, str]] = [
    ("not-list", {"name": "s"}, "", "expected a list, got an object"),
    ("item", [None], "[0]", "expected an object, got null"),
    ("name", [{"added": []}], "[0].name", "missing"),
    ("name-ident", [{"name": "s v4"}], "[0].name", "nft identifier"),
    ("unknown", [{"name": "s", "flushed": True}], "[0].flushed", "unknown key"),
    ("added", [{"name": "s", "added": "198.18.0.1/32"}], "[0].added", "expected a list"),
    ("element", [{"name": "s", "added": ["198.18.0.1/32", 5]}], "[0].added[1]",
     "expected an address text"),
    ("element-pair", [{"name": "m", "removed": [["198.18.0.1/32"]]}], "[0].removed[0]",
     "[address, chain] pair"),
    ("element-bad", [{"name": "s"}, {"name": "m", "removed": [["198.18.0.1/31", "c"]]}],
     "[1].removed[0][0]", "host bits set"),
    ("chain", [{"name": "m", "added": [["198.18.0.1/32", ""]]}], "[0].added[0][1]",
     "nft identifier"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "location", "fragment"),
    [c[1:] for c in DELTA_CASES],
    ids=[c[0] for c in DELTA_CASES],
)
def test_malformed_deltas_are_refused_with_their_location(
    data: object, location: str, fragment: str
) -> None:
    e = _error(data, deltas=True)
    assert e.location == location
    assert fragment in e.message


def test_ipv6_text_in_any_form_reads_as_the_same_network() -> None:
    doc = _set(_small_doc(), ("sets", 0), {"name": "s6", "type": "ipv6_addr", "interval": True,
                                           "elements": ["2001:0db8:0::/48", "::ffff:1.2.3.4/128",
                                                        "fe80::1%eth0/128"]})  # fmt: skip
    (s,) = decode_ruleset(doc).sets
    assert s.elements == (
        IPv6Network("2001:db8::/48"),
        IPv6Network("::ffff:102:304/128"),
        IPv6Network("fe80::1%eth0/128"),
    )
    assert s.elements[2] != IPv6Network("fe80::1/128")  # the zone index survives


# ------------------------------------------------------------------------------- totality

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(_JSON)
def test_random_json_never_raises_anything_but_wire_error(value: object) -> None:
    for decode in (decode_ruleset, decode_deltas):
        location = ""
        try:
            decode(value)
        except WireError as e:
            location = e.location
        assert isinstance(location, str)


def _paths(value: object, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _mutation_base() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    resolved = resolve_policy(ESTATE, T0)
    r = build_host_ruleset(resolved, ESTATE.enforcers()[0])
    # a few chains, sets and map elements of a real ruleset keep the path space small
    small = HostRuleset(
        r.enforcer,
        r.at,
        (*r.chains[:5], *r.chains[-3:]),
        tuple(s for s in r.sets if 0 < len(s.elements) < 6)[:4],
        tuple(VerdictMap(m.name, m.type, m.elements[:3], m.comment) for m in r.maps if m.elements),
    )
    other = build_host_ruleset(
        resolve_policy(apply_changes(ESTATE, address_changes(ESTATE, 5, 10)), T0),
        ESTATE.enforcers()[0],
    )
    deltas = [
        {k: v[:3] if isinstance(v, list) else v for k, v in d.items()}
        for d in encode_deltas(diff_rulesets(r, other).elements)
    ]
    return encode_ruleset(small), deltas


MUTATION_RULESET, MUTATION_DELTAS = _mutation_base()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_single_mutations_of_a_message_decode_or_raise_wire_error(data: st.DataObject) -> None:
    deltas = data.draw(st.booleans())
    doc: Any = copy.deepcopy(MUTATION_DELTAS if deltas else MUTATION_RULESET)
    path = data.draw(st.sampled_from(list(_paths(doc))))
    action = data.draw(st.sampled_from(("replace", "delete", "add-key", "wrap")))
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    if not path:
        doc = data.draw(_JSON)
    elif action == "replace":
        parent[path[-1]] = data.draw(_JSON)
    elif action == "delete":
        del parent[path[-1]]
    elif action == "add-key" and isinstance(parent[path[-1]], dict):
        parent[path[-1]][data.draw(st.text(max_size=8))] = data.draw(_JSON)
    else:
        parent[path[-1]] = [parent[path[-1]]]
    decode = decode_deltas if deltas else decode_ruleset
    encode = encode_deltas if deltas else encode_ruleset
    try:
        got = decode(doc)
    except WireError as e:
        error: WireError | None = e
    else:
        error = None
        assert decode(encode(got)) == got  # type: ignore[arg-type]
    assert error is None or isinstance(error.location, str)
