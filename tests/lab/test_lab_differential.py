"""Hypothesis-driven differential test: random small repositories, deployed by real agents in
the lab, agree with ``explain`` on every probed flow.

The estate's shape is fixed (three hosts and a container host with two containers, IPv4 and
IPv6), so the lab is built once; each example rewrites the repository (labels, modes, tiers,
policies with allow/deny/pass/log rules over selectors, CIDRs and ports), the agents pick it up
live, and ``probe_lab`` (which waits until every agent applied it) compares real TCP and UDP
connections with the prediction for every (source, destination, port).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from septum.lab.control import lab_down, lab_up
from septum.lab.probe import probe_lab
from tests.conftest import NETNS_PREFIX, require_root_nft

pytestmark = pytest.mark.root

#: name -> (kind, addresses, enforcer)
ESTATE = {
    "h1": ("host", "[198.18.1.1, 2001:db8:1::1]", "host-h1"),
    "h2": ("vm", "[198.18.1.2]", "vm-h2"),
    "h3": ("cloud", "[198.18.2.3, 2001:db8:2::3]", "cloud-h3"),
    "box": ("host", "[198.18.30.10]", "host-box"),
    "c1": ("container", "[198.18.30.11, 2001:db8:30::11]", "host-box"),
    "c2": ("container", "[198.18.30.12]", "host-box"),
}
PORTS = ["tcp/80", "tcp/8080", "udp/53"]
APPS, ROLES = ["a", "b"], ["x", "y"]
MODES = ["enforced", "enforced", "selective", "test", "visibility", "idle"]
CIDRS = ["198.18.1.0/24", "198.18.30.0/24", "198.18.0.0/15", "2001:db8:30::/48", "198.18.2.3/32"]


def _doc(kind: str, name: str, spec: str) -> str:
    body = textwrap.indent(spec.strip(), "  ")
    return f"apiVersion: septum/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{body}\n"


selectors = st.one_of(
    st.sampled_from(APPS).map(lambda a: f'app == "{a}"'),
    st.sampled_from(ROLES).map(lambda r: f'role == "{r}"'),
    st.tuples(st.sampled_from(APPS), st.sampled_from(ROLES)).map(
        lambda t: f'app == "{t[0]}" && role != "{t[1]}"'
    ),
    st.just("all()"),
)
peers = st.one_of(
    selectors.map(lambda s: f"'{s}'"),
    st.sampled_from(CIDRS).map(lambda c: f"{{cidr: {c}}}"),
)


@st.composite
def rules(draw: st.DrawFn, key: str) -> str:
    action = draw(st.sampled_from(["allow", "allow", "deny", "pass", "log"]))
    lines = [f"- action: {action}"]
    chosen = draw(st.lists(peers, max_size=2))
    if chosen:
        lines.append(f"  {key}: [{', '.join(chosen)}]")
    ports = draw(st.lists(st.sampled_from(PORTS), max_size=2, unique=True))
    if ports:
        lines.append(f"  ports: [{', '.join(ports)}]")
    return "\n".join(lines)


@st.composite
def repositories(draw: st.DrawFn) -> list[str]:
    docs = [
        _doc(
            "Settings",
            "settings",
            f"defaultAction: {draw(st.sampled_from(['deny', 'deny', 'allow']))}",
        ),
        _doc("Service", "probe", f"ports: [{', '.join(PORTS)}]"),
    ]
    tiers = draw(st.lists(st.sampled_from(["deny", "pass"]), min_size=1, max_size=2))
    for i, default in enumerate(tiers):
        docs.append(_doc("Tier", f"t{i}", f"order: {i + 1}\ndefaultAction: {default}"))
    for name, (kind, addresses, enforcer) in ESTATE.items():
        app, role = draw(st.sampled_from(APPS)), draw(st.sampled_from(ROLES))
        mode = draw(st.sampled_from(MODES))
        docs.append(
            _doc(
                "Workload",
                name,
                f"kind: {kind}\naddresses: {addresses}\n"
                f"enforcer: {enforcer}\nmode: {mode}\n"
                f"labels: {{app: {app}, role: {role}}}",
            )
        )
    for p in range(draw(st.integers(1, 4))):
        spec = [f"tier: t{draw(st.integers(0, len(tiers) - 1))}", f"order: {p}"]
        applies = draw(st.one_of(st.none(), selectors))
        if applies is not None:
            spec.append(f"appliesTo: {applies}")
        for direction, key in (("ingress", "from"), ("egress", "to")):
            if draw(st.booleans()):
                body = draw(st.lists(rules(key), max_size=3))
                spec.append(
                    f"{direction}:"
                    + ("".join("\n" + textwrap.indent(r, "  ") for r in body) or " []")
                )
        docs.append(_doc("Policy", f"p{p}", "\n".join(spec)))
    return docs


@pytest.fixture(scope="module")
def differential_lab() -> Iterator[tuple[Path, Path]]:
    require_root_nft()
    base = Path(tempfile.mkdtemp(prefix="septum-diff-"))
    repo, state = base / "repo", Path(tempfile.mkdtemp(prefix="septum-lab-d", dir="/tmp"))
    prefix = f"{NETNS_PREFIX}d{uuid.uuid4().hex[:6]}-"
    repo.mkdir()
    # The first repository only fixes the shape (and the probed ports): everything allowed.
    (repo / "repo.yaml").write_text(
        "---\n".join(
            [
                _doc("Settings", "settings", "defaultAction: allow"),
                _doc("Service", "probe", f"ports: [{', '.join(PORTS)}]"),
                *(
                    _doc("Workload", n, f"kind: {k}\naddresses: {a}\nenforcer: {e}")
                    for n, (k, a, e) in ESTATE.items()
                ),
            ]
        )
    )
    try:
        lab_up(repo, state_dir=state, prefix=prefix, agents=True, timeout=240)
        yield repo, state
    finally:
        lab_down(repo, state_dir=state, prefix=prefix)
        shutil.rmtree(base, ignore_errors=True)


@settings(
    max_examples=int(os.environ.get("SEPTUM_DIFF_EXAMPLES", "12")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",  # the same examples on every CI run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(docs=repositories())
def test_random_repositories_in_the_lab_agree_with_explain(
    differential_lab: tuple[Path, Path], docs: list[str]
) -> None:
    repo, state = differential_lab
    (repo / "repo.yaml").write_text("---\n".join(docs))
    report = probe_lab(repo, state_dir=state)
    assert report.results
    print(f"probes {len(report.results)}, connected {sum(r.connected for r in report.results)}, "
          f"retried {sum(r.retried for r in report.results)}")
    assert report.ok, (
        "\n".join(
            f"{r.probe.source}->{r.probe.destination} {r.probe.protocol.value}/{r.probe.port} "
            f"predicted={r.predicted} connected={r.connected} ({r.detail}): {r.summary}"
            for r in report.disagreements
        )
        + "\n"
        + "---\n".join(docs)
    )
