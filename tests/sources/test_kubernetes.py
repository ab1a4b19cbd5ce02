"""Kubernetes manifests → Septum's model: bad input is reported with file, line and column;
named ports, List kinds, ipBlock except and exposure map as the Kubernetes meaning says."""

from __future__ import annotations

from pathlib import Path

import pytest

from septum.engine.connectivity import ReportFormat, format_connectivity
from septum.engine.kubernetes import analyze_cluster
from septum.errors import ValidationError
from septum.sources.kubernetes import load_cluster
from septum.testing.builders import T0

NS = """apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
"""
DEPLOY = """---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: c
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: c
        ports: [{name: http, containerPort: 9090}, {name: pg, containerPort: 5432}]
"""


def write(tmp_path: Path, *texts: str) -> Path:
    for i, text in enumerate(texts):
        (tmp_path / f"f{i}.yaml").write_text(text)
    return tmp_path


def lines(path: Path) -> list[str]:
    return format_connectivity(analyze_cluster(load_cluster(path), T0),
                               ReportFormat.TXT).splitlines()


def test_bad_anp_action_names_file_line_and_column(tmp_path: Path) -> None:
    write(tmp_path, NS + DEPLOY, """apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: x}
spec:
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - action: Reject
    from: [{namespaces: {}}]
""")
    with pytest.raises(ValidationError) as e:
        load_cluster(tmp_path)
    (p,) = e.value.problems
    assert (Path(p.file).name, p.line, p.column) == ("f1.yaml", 8, 13)
    assert "Allow, Deny, Pass" in p.message


@pytest.mark.parametrize(("port", "message"), [("70000", "1-65535"), ("[1]", "1-65535")])
def test_bad_port_is_reported(tmp_path: Path, port: str, message: str) -> None:
    write(tmp_path, NS + DEPLOY, f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: shop}}
spec:
  podSelector: {{}}
  ingress:
  - ports: [{{port: {port}}}]
""")
    with pytest.raises(ValidationError) as e:
        load_cluster(tmp_path)
    assert message in str(e.value)
    assert "f1.yaml:7:" in str(e.value)


def test_yaml_syntax_error_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "kind: Namespace\nmetadata: {name: [\n")
    with pytest.raises(ValidationError, match=r"f0.yaml:\d+:\d+"):
        load_cluster(tmp_path)


def test_named_ports_resolve_per_pod(tmp_path: Path) -> None:
    """Ingress named port ``http`` means 8080 on web and 9090 on db; web's egress to ``http``
    means 9090 towards db; db's egress is open."""
    write(tmp_path, NS + DEPLOY, """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: in, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
""")
    assert lines(tmp_path) == [
        "0.0.0.0-255.255.255.255[External] => shop/db[StatefulSet] : TCP 9090",
        "0.0.0.0-255.255.255.255[External] => shop/web[Deployment] : TCP 8080",
        "shop/db[StatefulSet] => 0.0.0.0-255.255.255.255[External] : All Connections",
        "shop/db[StatefulSet] => shop/web[Deployment] : TCP 8080",
        "shop/web[Deployment] => shop/db[StatefulSet] : TCP 9090",
    ]


def test_ipblock_except_and_list_kinds(tmp_path: Path) -> None:
    write(tmp_path, """{"kind": "NamespaceList", "items": [{"metadata": {"name": "shop"}}]}""",
          DEPLOY, """apiVersion: networking.k8s.io/v1
kind: NetworkPolicyList
items:
- kind: NetworkPolicy
  metadata: {name: out, namespace: shop}
  spec:
    podSelector: {matchLabels: {app: web}}
    policyTypes: [Egress]
    egress:
    - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
""")
    out = [x for x in lines(tmp_path) if x.startswith("shop/web")]
    assert out == [
        "shop/web[Deployment] => 10.0.0.0-10.0.255.255[External] : All Connections",
        "shop/web[Deployment] => 10.2.0.0-10.255.255.255[External] : All Connections",
    ]


def test_unsupported_peer_is_a_warning_and_matches_nothing(tmp_path: Path) -> None:
    write(tmp_path, NS + DEPLOY, """apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: n}
spec:
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{nodes: {matchLabels: {a: b}}}]
""")
    cluster = load_cluster(tmp_path)
    assert any("matches nothing" in w.message for w in cluster.warnings)
    assert "shop/web[Deployment] => shop/db[StatefulSet] : All Connections" in lines(tmp_path)
