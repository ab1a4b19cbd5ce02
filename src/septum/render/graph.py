"""The dependency map as text: JSON, GraphML and Graphviz DOT.

::

    DependencyMap ──► map_to_json    ──► dict (json.dumps-ready)
                  ├─► map_to_graphml ──► GraphML text (networkx writer; scalar attributes)
                  └─► map_to_dot     ──► DOT text (written here) ──► flows.graphviz.render_svg

Every function is pure and deterministic: the same map gives the same text, byte for byte
(the map itself is already ordered). Cost: O(nodes + edges + services + examples).
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from septum.engine.attribution import EndpointKind
from septum.engine.depmap import (
    DependencyMap,
    EdgeStatus,
    Example,
    MapEdge,
    MapNode,
    ServiceUse,
    StatusSource,
)

__all__ = ["dot_quote", "map_to_dot", "map_to_graphml", "map_to_json", "services_label"]

#: Edge labels list every service up to this many; past it, the first ``_LABEL_SHOWN`` and
#: ``+N`` (``tcp/80, tcp/443, +3``).
_LABEL_SERVICES = 4
_LABEL_SHOWN = 2

_SHAPES = {
    EndpointKind.WORKLOAD: "box",
    EndpointKind.USER: "ellipse",
    EndpointKind.NETWORK: "note",
    EndpointKind.UNKNOWN: "diamond",
}
# status -> (colour, style)
_EDGE_STYLES = {
    EdgeStatus.ALLOWED: ("darkgreen", "solid"),
    EdgeStatus.WOULD_BE_DENIED: ("darkorange", "dashed"),
    EdgeStatus.DENIED: ("red", "bold"),
}


# ---------------------------------------------------------------------------- JSON


def map_to_json(m: DependencyMap) -> dict[str, object]:
    """A JSON-ready dict (only str, int, bool, None, lists and dicts): granularity, status
    source, nodes and edges with their services, counts and example explanations."""
    return {
        "granularity": list(m.granularity),
        "status_source": m.status_source.value,
        "groups": m.groups,
        "nodes": [_node_json(n) for n in m.nodes],
        "edges": [_edge_json(e) for e in m.edges],
    }


def _node_json(n: MapNode) -> dict[str, object]:
    return {
        "id": n.id,
        "kind": n.kind.value,
        "name": n.name,
        "labels": dict(n.labels),
        "members": list(n.members),
        "address_count": n.address_count,
    }


def _example_json(x: Example) -> dict[str, object]:
    return {
        "flow": x.flow.to_json(),
        "status": x.status.value,
        "records": x.records,
        "summary": x.summary,
    }


def _service_json(s: ServiceUse) -> dict[str, object]:
    return {
        "service": s.text,
        "protocol": s.protocol.value,
        "port": s.port,
        "status": s.status.value,
        "records": s.records,
        "connections": s.connections,
        "packets": s.packets,
        "bytes": s.bytes,
        "records_by_status": s.counts.to_json(),
        "staged_denied": s.staged_denied,
        "examples": [_example_json(x) for x in s.examples],
    }


def _edge_json(e: MapEdge) -> dict[str, object]:
    return {
        "source": e.source,
        "destination": e.destination,
        "status": e.status.value,
        "services": [_service_json(s) for s in e.services],
        "records": e.records,
        "connections": e.connections,
        "packets": e.packets,
        "bytes": e.bytes,
        "first_seen": e.first_seen.isoformat(),
        "last_seen": e.last_seen.isoformat(),
        "records_by_status": e.counts.to_json(),
        "staged_denied": e.staged_denied,
    }


# ---------------------------------------------------------------------------- GraphML


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)


def map_to_graphml(m: DependencyMap) -> str:
    """GraphML text of a directed graph: one GraphML node per map node (id = node id), one
    edge per map edge. Attributes are scalars: counts as integers (GraphML ``long``), times
    as RFC 3339 text, sets joined into text (``services`` ``"tcp/80, tcp/443"``, members
    ``", "``-joined, ``service_status`` ``"tcp/80=denied, tcp/443=allowed"``, example
    summaries one per line). Note that GraphML readers such as networkx's drop text
    attributes that are empty."""
    g = nx.DiGraph()
    g.graph["granularity"] = ",".join(m.granularity)
    g.graph["status_source"] = m.status_source.value
    g.graph["groups"] = m.groups
    for n in m.nodes:
        g.add_node(
            n.id,
            kind=n.kind.value,
            name=n.name,
            labels=_labels_text(n.labels),
            members=", ".join(n.members),
            address_count=n.address_count,
        )
    for e in m.edges:
        g.add_edge(
            e.source,
            e.destination,
            status=e.status.value,
            services=", ".join(s.text for s in e.services),
            service_status=", ".join(f"{s.text}={s.status.value}" for s in e.services),
            records=e.records,
            connections=e.connections,
            packets=e.packets,
            bytes=e.bytes,
            first_seen=e.first_seen.isoformat(),
            last_seen=e.last_seen.isoformat(),
            records_allowed=e.counts.allowed,
            records_would_be_denied=e.counts.would_be_denied,
            records_denied=e.counts.denied,
            staged_denied=e.staged_denied,
            examples="\n".join(f"{x.flow}: {x.summary}" for x in e.examples),
        )
    lines: Iterable[str] = nx.generate_graphml(g, encoding="utf-8", prettyprint=True)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- DOT


def dot_quote(text: str) -> str:
    """``text`` as a DOT double-quoted string whose escString reading is ``text`` itself:
    backslashes doubled, quotes escaped, line ends as ``\\n`` (so no Graphviz escape such
    as ``\\N`` or ``\\l`` can be smuggled in through a label value)."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\n")
    )
    return f'"{escaped}"'


def _dot_label(lines: Iterable[str]) -> str:
    """Lines joined with DOT's centred line break; each line quoted as by ``dot_quote``."""
    return '"' + "\\n".join(dot_quote(line)[1:-1] for line in lines) + '"'


def services_label(services: tuple[ServiceUse, ...]) -> str:
    """``tcp/80, tcp/443`` — past four services, the first two and ``+N``."""
    texts = [s.text for s in services]
    if len(texts) > _LABEL_SERVICES:
        texts = [*texts[:_LABEL_SHOWN], f"+{len(texts) - _LABEL_SHOWN}"]
    return ", ".join(texts)


def _node_lines(n: MapNode) -> list[str]:
    if n.kind is EndpointKind.WORKLOAD or n.kind is EndpointKind.USER:
        noun = "workload" if n.kind is EndpointKind.WORKLOAD else "user"
        plural = "" if len(n.members) == 1 else "s"
        detail = f"{len(n.members)} {noun}{plural}, {_addresses(n.address_count)}"
    else:
        detail = _addresses(n.address_count)
    return [n.name, detail]


def _addresses(count: int) -> str:
    return f"{count} address" + ("" if count == 1 else "es")


def _edge_lines(e: MapEdge) -> list[str]:
    """Services, then the record count with the records that are not plainly allowed:
    ``6 records (1 denied)``, ``9 records (9 staged-denied)``."""
    records = f"{e.records} record" + ("" if e.records == 1 else "s")
    parts = [
        f"{count} {what}"
        for count, what in (
            (e.counts.denied, "denied"),
            (e.counts.would_be_denied, "would be denied"),
            (e.staged_denied, "staged-denied"),
        )
        if count
    ]
    if parts:
        records += f" ({', '.join(parts)})"
    return [services_label(e.services), records]


def map_to_dot(m: DependencyMap) -> str:
    """Graphviz DOT text of the map: nodes shaped by kind (box workloads, ellipse users, note
    networks, diamond ``unknown``), edges coloured by status (allowed green solid, would be
    denied orange dashed, denied red bold) and labelled with their services and record
    count (with the denied, would-be-denied and staged-denied records), and a legend.
    Every id and label is quoted with :func:`dot_quote`."""
    source = "recorded verdicts" if m.status_source is StatusSource.RECORDED else "policy"
    granularity = ", ".join(m.granularity) if m.granularity else "workload"
    out = [
        "digraph dependency_map {",
        f"  graph [rankdir=LR, fontname=Helvetica, labelloc=t, label="
        f"{dot_quote(f'dependency map by {granularity}; status from {source}')}];",
        "  node [fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    for n in m.nodes:
        out.append(
            f"  {dot_quote(n.id)} [shape={_SHAPES[n.kind]}, label={_dot_label(_node_lines(n))}];"
        )
    for e in m.edges:
        colour, style = _EDGE_STYLES[e.status]
        out.append(
            f"  {dot_quote(e.source)} -> {dot_quote(e.destination)} [color={colour}, "
            f"fontcolor={colour}, style={style}, label={_dot_label(_edge_lines(e))}];"
        )
    out.extend(_legend())
    out.append("}")
    return "\n".join(out) + "\n"


def _legend() -> list[str]:
    """A legend cluster: one node per kind, one edge per status (ids prefixed ``legend:``,
    which no map node id can be)."""
    out = [
        "  subgraph cluster_legend {",
        '    label="legend"; fontsize=10; style=dashed; color=gray;',
    ]
    for kind, shape in _SHAPES.items():
        out.append(f'    "legend:{kind.value}" [shape={shape}, label="{kind.value}"];')
    for i, (status, (colour, style)) in enumerate(_EDGE_STYLES.items()):
        out.append(f'    "legend:from{i}" [shape=point, width=0.05, label=""];')
        out.append(f'    "legend:to{i}" [shape=point, width=0.05, label=""];')
        out.append(
            f'    "legend:from{i}" -> "legend:to{i}" [color={colour}, fontcolor={colour}, '
            f'style={style}, label="{status.value}"];'
        )
    out.append("  }")
    return out
