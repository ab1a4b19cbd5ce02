"""The dependency map as JSON, GraphML and DOT (``septum.render.graph``), and DOT through the
real Graphviz binary (``septum.flows.graphviz.render_svg``).

The map is built from recorded verdicts over hand-made flow groups (identities given
directly, no repository): a 3-tier app, users, the internet, unknown addresses, an idle host,
a would-be-denied and a denied edge, and a workload whose label value needs escaping.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from datetime import timedelta
from ipaddress import ip_address

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from septum.engine.attribution import EndpointKind
from septum.engine.depmap import (
    DependencyMap,
    MapOptions,
    build_dependency_map,
)
from septum.engine.explain import Evaluator
from septum.engine.observed import FlowGroup, Identity, RecordedVerdict
from septum.flows.graphviz import GraphvizError, render_svg
from septum.model.resources import PolicyMode, Protocol
from septum.render.graph import dot_quote, map_to_dot, map_to_graphml, map_to_json
from septum.testing.builders import T0, policy, repo, rule, tier, workload

# In CI (CI=true) a missing Graphviz fails these tests instead of skipping them.
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None and os.environ.get("CI") != "true",
    reason="Graphviz dot not installed",
)
SVG = "{http://www.w3.org/2000/svg}"
ODD_VALUE = 'say "hi" \\ C:\\path\\ \\N café'


def who(kind: EndpointKind, name: str | None = None, **labels: str) -> Identity:
    return Identity(kind, name, labels)


def wl(name: str, **labels: str) -> Identity:
    return who(EndpointKind.WORKLOAD, name, **labels)


NOBODY = who(EndpointKind.UNKNOWN)
INTERNET = who(EndpointKind.NETWORK, "internet")
WEB1, WEB2 = wl("web-1", app="shop", role="web"), wl("web-2", app="shop", role="web")
API, DB = wl("api-1", app="shop", role="api"), wl("db-1", app="shop", role="db")
ODD = wl("odd-1", app="odd", role=ODD_VALUE)
IDLE = wl("legacy-1")
ALICE = who(EndpointKind.USER, "alice", role="admin")


def group(
    src: tuple[str, Identity],
    dst: tuple[str, Identity],
    protocol: Protocol,
    port: int,
    records: int = 1,
    minutes: int = 0,
    **verdicts: int,
) -> FlowGroup:
    first = T0 + timedelta(minutes=minutes)
    return FlowGroup(
        ip_address(src[0]), ip_address(dst[0]), protocol, port, first,
        first + timedelta(minutes=5), records, records, 3 * records, 700 * records,
        src[1], dst[1], {RecordedVerdict[k.upper()]: v for k, v in verdicts.items()},
    )  # fmt: skip


TCP = Protocol.TCP
GROUPS = [
    group(("203.0.113.9", INTERNET), ("198.18.0.1", WEB1), TCP, 443, 20, allowed=20),
    group(("203.0.113.10", INTERNET), ("198.18.0.2", WEB2), TCP, 443, 4, minutes=3),
    *(
        group(("198.18.0.1", WEB1), ("198.18.0.10", API), TCP, p, i + 1, minutes=i)
        for i, p in enumerate((80, 443, 8080, 8081, 8443))
    ),
    group(("198.18.0.10", API), ("198.18.0.20", DB), TCP, 5432, 9),
    group(("198.18.0.2", WEB2), ("198.18.0.1", WEB1), TCP, 7000, 2),  # self-edge
    group(("198.19.128.10", ALICE), ("198.18.0.20", DB), TCP, 5432, 2, denied=2),
    group(("198.18.0.10", API), ("203.0.113.50", INTERNET), TCP, 443, 3, would_deny=3),
    group(("198.19.200.1", NOBODY), ("198.18.0.1", WEB1), TCP, 22, 1, denied=1),
    group(("2001:db8:ffff::1", NOBODY), ("2001:db8::1", WEB1), TCP, 443, 5),
    group(("198.18.1.5", IDLE), ("203.0.113.7", INTERNET), Protocol.UDP, 123, 6),
    group(("198.18.0.40", ODD), ("2001:db8::40", ODD), Protocol.ICMPV6, 0, 1),
]
OPTIONS = MapOptions(("app", "role"))


def the_map(groups: list[FlowGroup] = GROUPS) -> DependencyMap:
    return build_dependency_map(groups, None, OPTIONS)


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [t.text or "" for t in root.iter(f"{SVG}text")]


# ---------------------------------------------------------------------------- JSON


def test_json_is_plain_data_with_everything() -> None:
    m = the_map()
    data = map_to_json(m)
    assert json.loads(json.dumps(data)) == data
    assert data["status_source"] == "recorded"
    assert data["granularity"] == ["app", "role"]
    nodes = {n["id"]: n for n in data["nodes"]}  # type: ignore[attr-defined]
    assert nodes["workload[app=shop,role=web]"] == {
        "id": "workload[app=shop,role=web]",
        "kind": "workload",
        "name": "app=shop, role=web",
        "labels": {"app": "shop", "role": "web"},
        "members": ["web-1", "web-2"],
        "address_count": 3,
    }
    edges = {(e["source"], e["destination"]): e for e in data["edges"]}  # type: ignore[attr-defined]
    denied = edges[("user[role=admin]", "workload[app=shop,role=db]")]
    assert denied["status"] == "denied"
    assert denied["records_by_status"] == {"allowed": 0, "would-be-denied": 0, "denied": 2}
    (service,) = denied["services"]
    assert service["service"] == "tcp/5432"
    assert service["examples"][0]["summary"] == "recorded: 2 denied of 2 records"
    assert service["examples"][0]["flow"]["source"] == "198.19.128.10"
    assert denied["first_seen"] == T0.isoformat()


# ---------------------------------------------------------------------------- GraphML


def test_graphml_parses_back_with_equal_nodes_edges_and_attributes() -> None:
    m = the_map()
    text = map_to_graphml(m)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<graphml')
    g = nx.read_graphml(io.BytesIO(text.encode("utf-8")))
    assert isinstance(g, nx.DiGraph)
    assert (g.number_of_nodes(), g.number_of_edges()) == (len(m.nodes), len(m.edges))
    assert g.graph["granularity"] == "app,role"
    assert g.graph["status_source"] == "recorded"
    for n in m.nodes:
        attrs = g.nodes[n.id]
        assert attrs["kind"] == n.kind.value
        assert attrs["name"] == n.name
        assert attrs["address_count"] == n.address_count
        # networkx drops empty text attributes when reading
        assert attrs.get("members", "") == ", ".join(n.members)
        assert attrs.get("labels", "") == ",".join(f"{k}={v}" for k, v in n.labels)
    for e in m.edges:
        attrs = g.edges[e.source, e.destination]
        assert attrs["status"] == e.status.value
        assert attrs["services"] == ", ".join(s.text for s in e.services)
        assert (attrs["records"], attrs["packets"], attrs["bytes"]) == (
            e.records, e.packets, e.bytes,
        )  # fmt: skip
        assert attrs["records_denied"] == e.counts.denied
        assert attrs["first_seen"] == e.first_seen.isoformat()
        assert attrs.get("examples", "") == "\n".join(f"{x.flow}: {x.summary}" for x in e.examples)
    odd = next(n for n in m.nodes if n.id.startswith("workload[app=odd"))
    assert g.nodes[odd.id]["name"] == f"app=odd, role={ODD_VALUE}"
    assert g.has_edge(odd.id, odd.id)  # self-edge


def test_graphml_attributes_are_scalars_with_service_statuses() -> None:
    g = nx.read_graphml(io.BytesIO(map_to_graphml(the_map()).encode()))
    attrs = g.edges["workload[app=shop,role=web]", "workload[app=shop,role=api]"]
    assert attrs["services"] == "tcp/80, tcp/443, tcp/8080, tcp/8081, tcp/8443"
    assert attrs["service_status"].startswith("tcp/80=allowed, tcp/443=allowed")
    for _, _, data in g.edges(data=True):
        assert all(isinstance(v, (str, int, float, bool)) for v in data.values())


# ---------------------------------------------------------------------------- DOT


def test_dot_quote_escapes_quotes_backslashes_and_line_ends() -> None:
    assert dot_quote("plain") == '"plain"'
    assert dot_quote('a "b"') == '"a \\"b\\""'
    assert dot_quote("C:\\dir\\") == '"C:\\\\dir\\\\"'
    assert dot_quote("\\N\\l") == '"\\\\N\\\\l"'
    assert dot_quote("one\ntwo\r\nthree") == '"one\\ntwo\\nthree"'


def test_dot_shapes_colours_labels_and_legend() -> None:
    dot = map_to_dot(the_map())
    assert dot.startswith("digraph dependency_map {\n")
    assert dot.endswith("}\n")
    assert (
        '"workload[app=shop,role=web]" [shape=box, '
        'label="app=shop, role=web\\n2 workloads, 3 addresses"];'
    ) in dot
    assert '"user[role=admin]" [shape=ellipse, label="role=admin\\n1 user, 1 address"];' in dot
    assert '"network/internet" [shape=note, label="internet\\n4 addresses"];' in dot
    assert '"unknown" [shape=diamond, label="unknown\\n2 addresses"];' in dot
    assert (
        '"workload[app=shop,role=web]" -> "workload[app=shop,role=api]" [color=darkgreen, '
        'fontcolor=darkgreen, style=solid, label="tcp/80, tcp/443, +3\\n15 records"];'
    ) in dot
    assert (
        '"user[role=admin]" -> "workload[app=shop,role=db]" [color=red, fontcolor=red, '
        'style=bold, label="tcp/5432\\n2 records (2 denied)"];'
    ) in dot
    assert (
        '"workload[app=shop,role=api]" -> "network/internet" [color=darkorange, '
        'fontcolor=darkorange, style=dashed, label="tcp/443\\n3 records (3 would be denied)"];'
    ) in dot
    assert "subgraph cluster_legend {" in dot
    assert "status from recorded verdicts" in dot


def test_dot_label_abbreviation_past_four_services() -> None:
    four = [g for g in GROUPS if g.port != 8443]
    assert 'label="tcp/80, tcp/443, tcp/8080, tcp/8081\\n' in map_to_dot(the_map(four))


def test_dot_escapes_ids_and_labels() -> None:
    dot = map_to_dot(the_map())
    value = ODD_VALUE.replace("\\", "\\\\").replace('"', '\\"')
    assert f'label="app=odd, role={value}\\n1 workload, 2 addresses"' in dot
    assert '"workload[app=odd,role=say \\"hi\\" \\\\\\\\ C:\\\\\\\\path' in dot


@needs_dot
def test_dot_renders_to_svg_with_every_node_label() -> None:
    m = the_map()
    svg = render_svg(map_to_dot(m))
    texts = svg_texts(svg)
    for n in m.nodes:
        assert n.name in texts, n.name
    assert f"app=odd, role={ODD_VALUE}" in texts  # quotes, backslashes, \N kept literally
    assert "tcp/80, tcp/443, +3" in texts
    assert "6 records (1 denied)" in texts
    assert {"workload", "user", "network", "unknown", "denied", "would-be-denied"} <= set(texts)
    titles = [t.text for t in ET.fromstring(svg).iter(f"{SVG}title")]
    assert len([t for t in titles if t and "->" in t and "legend" not in t]) == len(m.edges)


@needs_dot
def test_policy_map_renders_with_another_engine() -> None:
    r = repo(
        tier("app", 1),
        workload("web-1", "198.18.0.1", app="web"),
        workload("db-1", "198.18.0.2", app="db"),
        policy("db", "app", applies_to='app == "db"', ingress=[rule("allow", 'app == "web"')]),
        policy("web", "app", applies_to='app == "web"', egress=[rule("allow")]),
        policy(
            "lock", "app", order=1, applies_to='app == "db"', mode=PolicyMode.STAGED,
            ingress=[rule("deny", 'app == "web"', ports=["tcp/5432"])],
        ),
    )  # fmt: skip
    web, db = wl("web-1", app="web"), wl("db-1", app="db")
    groups = [
        group(("198.18.0.1", web), ("198.18.0.2", db), TCP, 5432, 3),
        group(("198.18.0.2", db), ("198.18.0.1", web), TCP, 22, 1),
    ]
    m = build_dependency_map(groups, Evaluator(r), MapOptions(("app",)))
    svg = render_svg(map_to_dot(m), engine="neato")
    assert {"app=web", "app=db", "tcp/5432", "tcp/22"} <= set(svg_texts(svg))
    # web -> db allowed, a staged policy would deny it; db -> web: nothing allows db's egress
    assert {"3 records (3 staged-denied)", "1 record (1 denied)"} <= set(svg_texts(svg))
    assert "status from policy" in " ".join(svg_texts(svg))


# ---------------------------------------------------------------------------- Graphviz errors


def test_missing_graphviz_says_what_to_install() -> None:
    with pytest.raises(GraphvizError, match="install the Debian package graphviz"):
        render_svg("digraph {}", binary="/nonexistent/septum-test/dot")


@needs_dot
def test_graphviz_failure_includes_its_stderr() -> None:
    with pytest.raises(GraphvizError, match=r"exit status \d+\): .*syntax error"):
        render_svg('digraph { "a" -> }')


def test_unknown_layout_engine_is_refused() -> None:
    with pytest.raises(GraphvizError, match="unknown Graphviz layout engine"):
        render_svg("digraph {}", engine="-o/tmp/x")


# ---------------------------------------------------------------------------- determinism


def test_outputs_are_deterministic() -> None:
    m = the_map()
    assert map_to_dot(m) == map_to_dot(the_map())
    assert map_to_graphml(m) == map_to_graphml(the_map())


@settings(max_examples=30, deadline=None)
@given(st.permutations(GROUPS))
def test_shuffled_groups_give_the_same_text_byte_for_byte(shuffled: list[FlowGroup]) -> None:
    reference, m = the_map(), the_map(shuffled)
    assert map_to_dot(m) == map_to_dot(reference)
    assert map_to_graphml(m) == map_to_graphml(reference)
    assert json.dumps(map_to_json(m), sort_keys=False) == json.dumps(map_to_json(reference))
