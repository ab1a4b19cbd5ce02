"""Benchmark of ``septum k8s connectivity`` against network-config-analyzer, same input, same job.

    python bench/k8s.py [--sizes 100,1000,10000] [--seed 1] [--repeat 3] [--peer-timeout 600]
                        [--quick] [--keep DIR] [--septum-cmd 'CMD ... {dir}'] [--nca PATH] [--json]

For each size, a seeded cluster (``bench/k8s_cluster.py``: Deployments over namespaces,
NetworkPolicies, AdminNetworkPolicies and a BaselineAdminNetworkPolicy) is written as YAML in
two variants: ``full`` and ``np-only`` (the same files less the admin policies). Each tool runs
as a child process on a variant's directory: septum as ``septum k8s connectivity DIR --format
txt`` (best of ``--repeat``), network-config-analyzer (the ``nca`` CLI of the PyPI package
``network-config-analyzer``) as ``nca --connectivity --resource_list DIR --output_format
txt_no_fw_rules --output_endpoints deployments`` (once, killed after ``--peer-timeout``).
Wall time is measured around the child; peak memory is the child's ``ru_maxrss`` as returned
by ``wait4`` for that child alone. A probe (an AdminNetworkPolicy denying all ingress between
two pods) tells whether the installed network-config-analyzer reads AdminNetworkPolicy; when
it does not, it runs on the ``np-only`` variant only, and the output says so.

Both outputs are parsed into per-pair connection sets (protocol -> port intervals) and
compared as the netpol-analyzer conformance README says: per workload pair equal sets, and
per workload and direction the same connections to every external IPv4 address, whatever
the split of address ranges into lines. Its simulated endpoints (``*-livesim``) and IPv6
lines are left out. The table has one row per size and variant; the headline is the ratio
nca time / septum time at 1k pods (target >= 10x).

``--standin-from-nca DIR`` prints the connectivity of DIR computed by network-config-analyzer
in septum's (netpol-analyzer's connlist) text format: a stand-in for ``septum k8s
connectivity`` to exercise this harness while that command does not exist (``--septum-cmd``).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from k8s_cluster import ClusterStats, generate_cluster, write_cluster

TARGET_RATIO_1K = 10.0
PROTOCOLS = ("SCTP", "TCP", "UDP")
ALL_PORTS = ((1, 65535),)
IPV4_END = 2**32 - 1
SIDES = ("septum", "nca")

#: A connection set: per protocol (sorted, non-empty only) its sorted, disjoint port intervals.
Conn = tuple[tuple[str, tuple[tuple[int, int], ...]], ...]
ALL: Conn = tuple((p, ALL_PORTS) for p in PROTOCOLS)
EMPTY: Conn = ()


# --------------------------------------------------------------------------- connection sets


def _merge(intervals: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


def _conn(d: dict[str, list[tuple[int, int]]]) -> Conn:
    return tuple((p, merged) for p in sorted(d) if (merged := _merge(d[p])))


def union(a: Conn, b: Conn) -> Conn:
    d: dict[str, list[tuple[int, int]]] = {}
    for p, ivs in (*a, *b):
        d.setdefault(p, []).extend(ivs)
    return _conn(d)


def _minus_intervals(
    a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi < cur or blo > hi:
                continue
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def minus(a: Conn, b: Conn) -> Conn:
    bd = dict(b)
    return _conn({p: _minus_intervals(ivs, bd.get(p, ())) for p, ivs in a})


def format_conn(c: Conn) -> str:
    """netpol-analyzer's text: ``All Connections`` or ``SCTP 1-9002,9004-65535,TCP 80``."""
    if c == ALL:
        return "All Connections"
    if not c:
        return "No Connections"
    return ",".join(
        f"{p} " + ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ivs) for p, ivs in c
    )


def _ports(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.append((int(lo), int(hi or lo)))
    return out


def parse_connlist_conn(text: str) -> Conn:
    """``All Connections`` or ``SCTP 1-9002,9004-65535,TCP 80,UDP 53`` (netpol-analyzer)."""
    text = text.strip()
    if text.lower() == "all connections":
        return ALL
    d: dict[str, list[tuple[int, int]]] = {}
    proto = ""
    for token in text.split(","):
        token = token.strip()
        if token[:1].isalpha():
            proto, _, token = token.partition(" ")
            proto = proto.upper()
            if not token:  # a protocol alone: all its ports
                token = "1-65535"
        if not proto:
            raise ValueError(f"connection without a protocol: {text!r}")
        d.setdefault(proto, []).extend(_ports(token))
    return _conn(d)


_CUBE = re.compile(r"\{([^{}]*)\}")


def _nca_protocols(text: str) -> list[str]:
    text = text.strip()
    negate = text.startswith("all but ")
    names = {n.strip().upper() for n in text.removeprefix("all but ").split(",") if n.strip()}
    if text == "*":
        return list(PROTOCOLS)
    if negate:
        return [p for p in PROTOCOLS if p not in names]
    return [p for p in PROTOCOLS if p in names]  # others (ICMP, numbers) carry no ports here


def parse_nca_conn(text: str) -> Conn:
    """network-config-analyzer's ``txt_no_fw_rules`` connection text: ``All connections``,
    ``No connections``, cubes ``{protocols:TCP, UDP,dst_ports:53,80-90}`` joined by commas,
    or ``All but <cubes>``; protocols outside TCP/UDP/SCTP are ignored."""
    text = text.strip()
    if text == "All connections":
        return ALL
    if text == "No connections":
        return EMPTY
    if text.startswith("All but "):
        return minus(ALL, parse_nca_conn(text.removeprefix("All but ")))
    d: dict[str, list[tuple[int, int]]] = {}
    cubes = _CUBE.findall(text)
    if not cubes:
        raise ValueError(f"unrecognised network-config-analyzer connection {text!r}")
    for cube in cubes:
        protos, ports = "*", "1-65535"
        rest = cube
        if rest.startswith("protocols:"):
            rest = rest.removeprefix("protocols:")
            protos, sep, rest = rest.partition(",dst_ports:")
            if sep:
                ports = rest
            rest = ""
        elif rest.startswith("dst_ports:"):
            ports, rest = rest.removeprefix("dst_ports:"), ""
        if rest or ":" in ports:
            raise ValueError(f"unrecognised cube {{{cube}}} in {text!r}")
        for p in _nca_protocols(protos):
            d.setdefault(p, []).extend(_ports(ports))
    return _conn(d)


# --------------------------------------------------------------------------- connectivity


@dataclass(slots=True)
class Connectivity:
    """Allowed connections: workload pairs, and per (workload, direction) external ranges."""

    pairs: dict[tuple[str, str], Conn] = field(default_factory=dict)
    externals: dict[tuple[str, str], list[tuple[int, int, Conn]]] = field(default_factory=dict)
    skipped: int = 0  # lines left out: IPv6, simulated (livesim) endpoints, ingress controller

    @property
    def lines(self) -> int:
        return len(self.pairs) + sum(len(v) for v in self.externals.values())


_IPV4_PIECE = re.compile(r"^[0-9.]+(?:-[0-9.]+|/[0-9]+)?$")


def _external(name: str) -> list[tuple[int, int]] | None:
    """The IPv4 ranges of an external endpoint, [] for IPv6 only, None for a workload."""
    name = name.removesuffix("[External]")
    pieces = name.split(",")
    if not all(_IPV4_PIECE.match(p) or ":" in p for p in pieces):
        return None
    out = []
    for p in pieces:
        if ":" in p:
            continue
        if "/" in p:
            net = ipaddress.IPv4Network(p, strict=False)
            out.append((int(net.network_address), int(net.broadcast_address)))
        else:
            lo, _, hi = p.partition("-")
            out.append((int(ipaddress.IPv4Address(lo)), int(ipaddress.IPv4Address(hi or lo))))
    return out


def parse_connectivity(text: str, nca: bool = False) -> Connectivity:
    """Lines ``SRC => DST : CONNECTIONS`` (netpol-analyzer connlist, or network-config-
    analyzer's ``txt_no_fw_rules`` when ``nca``); other lines are ignored."""
    out = Connectivity()
    parse = parse_nca_conn if nca else parse_connlist_conn
    for line in text.splitlines():
        if " => " not in line or " : " not in line:
            continue
        src, rest = line.split(" => ", 1)
        dst, conn_text = rest.split(" : ", 1)
        src, dst = src.strip(), dst.strip()
        if any(e.startswith("{") or "-livesim" in e for e in (src, dst)):
            out.skipped += 1
            continue
        conn = parse(conn_text)
        if not conn:
            continue
        src_ext, dst_ext = _external(src), _external(dst)
        if src_ext is not None and dst_ext is not None:
            continue  # external to external: not a connection of the cluster
        if src_ext is None and dst_ext is None:
            key = (src, dst)
            out.pairs[key] = union(out.pairs[key], conn) if key in out.pairs else conn
            continue
        ranges, key = (
            (src_ext, (dst, "ingress"))
            if src_ext is not None
            else (
                dst_ext,
                (src, "egress"),
            )
        )
        if not ranges:
            out.skipped += 1
            continue
        out.externals.setdefault(key, []).extend((lo, hi, conn) for lo, hi in ranges)
    return out


def _pieces(segments: list[tuple[int, int, Conn]], cuts: list[int]) -> list[Conn]:
    """The connection on each elementary range ``[cuts[i], cuts[i+1])`` (union where a
    side's ranges overlap)."""
    out: list[Conn] = [EMPTY] * len(cuts)
    for lo, hi, conn in segments:
        first = bisect.bisect_left(cuts, lo)
        last = bisect.bisect_right(cuts, hi)
        for i in range(first, last):
            out[i] = union(out[i], conn) if out[i] else conn
    return out


def _ext_diffs(
    a: list[tuple[int, int, Conn]], b: list[tuple[int, int, Conn]]
) -> list[tuple[int, int, Conn, Conn]]:
    """Address ranges where the two sides allow different connections."""
    cuts = sorted({0, *(s[0] for s in (*a, *b)), *(s[1] + 1 for s in (*a, *b))})
    cuts = [c for c in cuts if c <= IPV4_END]
    pa, pb = _pieces(a, cuts), _pieces(b, cuts)
    out: list[tuple[int, int, Conn, Conn]] = []
    for i, lo in enumerate(cuts):
        hi = cuts[i + 1] - 1 if i + 1 < len(cuts) else IPV4_END
        ca, cb = pa[i], pb[i]
        if ca != cb:
            if out and out[-1][1] == lo - 1 and out[-1][2:] == (ca, cb):
                out[-1] = (out[-1][0], hi, ca, cb)
            else:
                out.append((lo, hi, ca, cb))
    return out


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def compare(a: Connectivity, b: Connectivity, names: tuple[str, str] = SIDES) -> list[str]:
    """Every difference between two connectivities (empty when they agree)."""
    diffs: list[str] = []
    for key in sorted(a.pairs.keys() | b.pairs.keys()):
        ca, cb = a.pairs.get(key, EMPTY), b.pairs.get(key, EMPTY)
        if ca != cb:
            diffs.append(
                f"{key[0]} => {key[1]}: {names[0]} {format_conn(ca)} | {names[1]} {format_conn(cb)}"
            )
    for key in sorted(a.externals.keys() | b.externals.keys()):
        workload, direction = key
        for lo, hi, ca, cb in _ext_diffs(a.externals.get(key, []), b.externals.get(key, [])):
            ext = f"{_ip(lo)}-{_ip(hi)}[External]"
            src, dst = (workload, ext) if direction == "egress" else (ext, workload)
            diffs.append(
                f"{src} => {dst}: {names[0]} {format_conn(ca)} | {names[1]} {format_conn(cb)}"
            )
    return diffs


def format_connlist(c: Connectivity) -> str:
    """The connectivity in netpol-analyzer's connlist text, sorted."""
    lines = [f"{s} => {d} : {format_conn(conn)}" for (s, d), conn in c.pairs.items()]
    for (workload, direction), segments in c.externals.items():
        for lo, hi, conn in segments:
            ext = f"{_ip(lo)}-{_ip(hi)}[External]"
            src, dst = (workload, ext) if direction == "egress" else (ext, workload)
            lines.append(f"{src} => {dst} : {format_conn(conn)}")
    return "\n".join(sorted(lines)) + ("\n" if lines else "")


# --------------------------------------------------------------------------- child processes


@dataclass(slots=True)
class Measured:
    seconds: float
    max_rss_mib: float
    returncode: int
    timed_out: bool
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def measure(cmd: Sequence[str], timeout: float, stdout_path: Path) -> Measured:
    """Run ``cmd`` in its own session, stdout to a file; wall time, and peak RSS of that
    child (``wait4``'s rusage: that process and the children it waited for). Killed, with
    its whole process group, after ``timeout`` seconds."""
    timed_out = threading.Event()
    with stdout_path.open("wb") as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no child behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace")
    return Measured(seconds, usage.ru_maxrss / 1024, proc.returncode, timed_out.is_set(), tail)


def _venv_tool(name: str) -> str | None:
    """``name`` beside this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def septum_command(template: str | None, directory: Path) -> list[str]:
    if template:
        return [t.replace("{dir}", str(directory)) for t in shlex.split(template)]
    septum = _venv_tool("septum")
    base = [septum] if septum else [sys.executable, "-m", "septum.cli.main"]
    return [*base, "k8s", "connectivity", str(directory), "--format", "txt"]


def nca_command(nca: str, directory: Path) -> list[str]:
    return [
        nca,
        "--connectivity",
        "--resource_list",
        str(directory),
        "--output_format",
        "txt_no_fw_rules",
        "--output_endpoints",
        "deployments",
    ]


def _septum_available(template: str | None) -> tuple[bool, str]:
    """Whether ``septum k8s connectivity`` exists (its --help succeeds)."""
    if template:
        return True, "custom command"
    cmd = [*septum_command(None, Path("DIR"))[:-3], "--help"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return True, ""
    lines = [ln.strip("│╭╮╰╯─ ") for ln in (done.stderr or done.stdout).splitlines()]
    lines = [ln for ln in lines if ln]
    said = [ln for ln in lines if "No such command" in ln or "Error" in ln] or lines
    return False, said[-1][:120] if said else f"exit {done.returncode}"


# --------------------------------------------------------------------------- the peer


@dataclass(slots=True)
class Peer:
    path: str | None
    version: str = ""
    reads_admin_policies: bool = False
    probe: str = ""


_PROBE_DOCS: list[dict[str, Any]] = [
    *(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
        }
        for ns in ("probe-a", "probe-b")
    ),
    *(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "app"}},
                "template": {
                    "metadata": {"labels": {"app": "app"}},
                    "spec": {"containers": [{"name": "app", "image": "app"}]},
                },
            },
        }
        for ns in ("probe-a", "probe-b")
    ),
    {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": "deny-all-ingress"},
        "spec": {
            "priority": 1,
            "subject": {"namespaces": {}},
            "ingress": [{"name": "deny", "action": "Deny", "from": [{"namespaces": {}}]}],
        },
    },
]


def probe_peer(path: str | None, work: Path, timeout: float) -> Peer:
    """The peer's version, and whether it reads AdminNetworkPolicy: an ANP denying all
    ingress must leave no connection between two pods."""
    if path is None:
        return Peer(None)
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
    version = (done.stdout or done.stderr).strip().splitlines()
    peer = Peer(path, version[-1].split()[-1] if version else "?")
    d = work / "nca-probe"
    d.mkdir(parents=True, exist_ok=True)
    with (d / "probe.yaml").open("w") as f:
        yaml.safe_dump_all(_PROBE_DOCS, f)
    m = measure(nca_command(path, d), timeout, work / "nca-probe.out")
    if not m.ok:
        peer.probe = f"probe failed (exit {m.returncode}): {m.stderr_tail.strip()[-200:]}"
        return peer
    pairs = parse_connectivity((work / "nca-probe.out").read_text(), nca=True).pairs
    peer.reads_admin_policies = not pairs
    peer.probe = (
        "an AdminNetworkPolicy denying all ingress left no pod-to-pod connection"
        if not pairs
        else f"an AdminNetworkPolicy denying all ingress left {len(pairs)} pod-to-pod "
        "connection(s): it ignores AdminNetworkPolicy/BaselineAdminNetworkPolicy"
    )
    return peer


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class ToolRun:
    seconds: float | None = None
    runs: list[float] = field(default_factory=list)
    max_rss_mib: float | None = None
    status: str = "not run"  # ok | timed out after X s | exit N | n/a: why
    lines: int | None = None


@dataclass(slots=True)
class Row:
    size: int
    variant: str
    stats: ClusterStats
    septum: ToolRun
    nca: ToolRun
    agree: str = "n/a"
    differences: list[str] = field(default_factory=list)
    difference_count: int = 0

    @property
    def ratio(self) -> float | None:
        if (
            self.septum.status == self.nca.status == "ok"
            and self.septum.seconds
            and self.nca.seconds
        ):
            return self.nca.seconds / self.septum.seconds
        return None


def _run_tool(
    cmd: list[str], timeout: float, repeat: int, out: Path, nca: bool
) -> tuple[ToolRun, Connectivity | None]:
    run = ToolRun()
    for _ in range(repeat):
        m = measure(cmd, timeout, out)
        if m.timed_out:
            run.status = f"timed out after {timeout:g} s"
            run.max_rss_mib = m.max_rss_mib  # when it was killed
            return run, None
        if m.returncode != 0:
            last = m.stderr_tail.strip().splitlines()
            run.status = f"exit {m.returncode}: {last[-1][:100] if last else ''}"
            run.seconds = run.max_rss_mib = None  # no figure from a failed series
            return run, None
        run.runs.append(m.seconds)
        if run.seconds is None or m.seconds < run.seconds:
            run.seconds, run.max_rss_mib = m.seconds, m.max_rss_mib
    run.status = "ok"
    conn = parse_connectivity(out.read_text(), nca=nca)
    run.lines = conn.lines
    return run, conn


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="septum-bench-k8s-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _floor(cmd: list[str]) -> float | None:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, timeout=120)
    return time.perf_counter() - start if done.returncode == 0 else None


def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    septum_ok, septum_why = _septum_available(args.septum_cmd)
    peer = probe_peer(
        None if args.no_peer else (args.nca or _venv_tool("nca")), work, args.peer_timeout
    )
    out: dict[str, Any] = {
        "seed": args.seed,
        "peer_timeout_s": args.peer_timeout,
        "python": sys.version.split()[0],
        "septum": {
            "available": septum_ok,
            "why": septum_why,
            "command": septum_command(args.septum_cmd, Path("DIR")),
        },
        "nca": asdict(peer),
        "floor_s": {
            "septum": _floor([*septum_command(None, Path("DIR"))[:1], "--help"])
            if septum_ok and not args.septum_cmd
            else None,
            "nca": _floor([peer.path, "--version"]) if peer.path else None,
        },
        "rows": [],
    }
    for size in args.sizes:
        cluster = generate_cluster(args.seed, size)
        for variant in ("full", "np-only"):
            np_only = variant == "np-only"
            d = work / f"pods-{size}" / variant
            stats = write_cluster(cluster, d, np_only=np_only)
            row = Row(size, variant, stats, ToolRun(), ToolRun())
            conns: dict[str, Connectivity | None] = {"septum": None, "nca": None}
            if septum_ok:
                row.septum, conns["septum"] = _run_tool(
                    septum_command(args.septum_cmd, d),
                    args.timeout,
                    args.repeat,
                    d.parent / f"septum-{variant}.txt",
                    nca=False,
                )
            else:
                row.septum.status = "n/a: septum k8s connectivity not available"
            if peer.path is None:
                row.nca.status = "n/a: network-config-analyzer not installed"
            elif not np_only and not peer.reads_admin_policies:
                row.nca.status = "n/a: ignores AdminNetworkPolicy"
            else:
                row.nca, conns["nca"] = _run_tool(
                    nca_command(peer.path, d),
                    args.peer_timeout,
                    args.peer_repeat,
                    d.parent / f"nca-{variant}.txt",
                    nca=True,
                )
            a, b = conns["septum"], conns["nca"]
            if a is not None and b is not None:
                diffs = compare(a, b)
                row.agree = "yes" if not diffs else f"NO ({len(diffs)} differences)"
                row.differences, row.difference_count = diffs[: args.show_diffs], len(diffs)
            out["rows"].append(row)
        del cluster
    out["rows"] = [
        {**asdict(r), "stats": {**asdict(r.stats), "policies": r.stats.policies}, "ratio": r.ratio}
        for r in out["rows"]
    ]
    out["headline"] = _headline(out, peer)
    return out


def _headline(out: dict[str, Any], peer: Peer) -> str:
    variant = "full" if peer.reads_admin_policies else "np-only"
    rows = [r for r in out["rows"] if r["size"] == 1000 and r["variant"] == variant]
    if not rows:
        return "1k pods: not measured in this run (add 1000 to --sizes)"
    r = rows[0]
    note = (
        ""
        if variant == "full"
        else " [on the NetworkPolicy-only variant: network-config-analyzer does not read "
        "AdminNetworkPolicy]"
    )
    s, n = r["septum"], r["nca"]
    if s["status"] != "ok":
        return f"1k pods: septum {s['status']}; no ratio"
    if n["status"].startswith("timed out"):
        ratio = out["peer_timeout_s"] / s["seconds"]
        return (
            f"1k pods: septum is more than {ratio:.1f}x faster than network-config-analyzer "
            f"(it {n['status']}) (target >= {TARGET_RATIO_1K:.0f}x) "
            f"{'ok' if ratio >= TARGET_RATIO_1K else 'MISSED'}{note}"
        )
    if r["ratio"] is None:
        return f"1k pods: network-config-analyzer {n['status']}; no ratio"
    ok = "ok" if r["ratio"] >= TARGET_RATIO_1K else "MISSED"
    return (
        f"1k pods: septum is {r['ratio']:.1f}x faster than network-config-analyzer "
        f"(target >= {TARGET_RATIO_1K:.0f}x) {ok}; outputs agree: {r['agree']}{note}"
    )


# --------------------------------------------------------------------------- printing


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print(out: dict[str, Any]) -> None:
    nca = out["nca"]
    print(f"septum k8s connectivity benchmark: seed {out['seed']} (python {out['python']})")
    s = out["septum"]
    print(
        "septum: "
        + " ".join(s["command"])
        + ("" if s["available"] else f"  -- NOT AVAILABLE: {s['why']}")
    )
    if nca["path"]:
        print(f"network-config-analyzer {nca['version']}: {nca['path']}")
        print(
            f"  reads AdminNetworkPolicy/BaselineAdminNetworkPolicy: "
            f"{'yes' if nca['reads_admin_policies'] else 'no'} (probe: {nca['probe']})"
        )
        if not nca["reads_admin_policies"]:
            print(
                "  so it runs on the np-only variant only (the same manifests without the "
                "admin policies); the ratio and agreement are taken there"
            )
    else:
        print("network-config-analyzer: not installed (pip install -e '.[bench]')")
    floors = out["floor_s"]
    print(
        f"process floor (start-up, no input): septum --help {_fmt(floors['septum'], '.2f')} s, "
        f"nca --version {_fmt(floors['nca'], '.2f')} s"
    )
    print(
        "times: wall clock of the child process, septum best of its runs, nca one run; "
        "MiB: the child's peak RSS (wait4 ru_maxrss)"
    )
    head = (
        f"{'pods':>6} {'workloads':>9} {'variant':<8} {'NP':>5} {'ANP':>4} {'BANP':>4} "
        f"{'septum s':>9} {'septum MiB':>10} {'nca s':>9} {'nca MiB':>8} "
        f"{'nca/septum':>10} {'lines s/n':>15}  agree"
    )
    print(head)
    print("-" * len(head))
    notes: list[str] = []
    for r in out["rows"]:
        st, sp, nc = r["stats"], r["septum"], r["nca"]
        sep_s = _fmt(sp["seconds"], ".3f") if sp["status"] == "ok" else "n/a"
        nca_s = _fmt(nc["seconds"], ".3f") if nc["status"] == "ok" else "n/a"
        if nc["status"].startswith("timed out"):
            nca_s = "timeout"
        ratio = _fmt(r["ratio"], ".1f") + ("x" if r["ratio"] is not None else "")
        print(
            f"{st['pods']:>6} {st['workloads']:>9} {r['variant']:<8} "
            f"{st['network_policies']:>5} {st['admin_network_policies']:>4} "
            f"{st['baseline_admin_network_policies']:>4} {sep_s:>9} "
            f"{_fmt(sp['max_rss_mib'], '.0f'):>10} {nca_s:>9} {_fmt(nc['max_rss_mib'], '.0f'):>8} "
            f"{ratio:>10} {_fmt(sp['lines'], 'd') + '/' + _fmt(nc['lines'], 'd'):>15}  "
            f"{r['agree']}"
        )
        for who, t in (("septum", sp), ("nca", nc)):
            if t["status"] != "ok" and not t["status"].startswith("n/a"):
                notes.append(f"  {st['pods']} pods, {r['variant']}: {who} {t['status']}")
            if len(t["runs"]) > 1:
                runs = " ".join(f"{x:.3f}" for x in t["runs"])
                notes.append(f"  {st['pods']} pods, {r['variant']}: {who} runs {runs} s")
        if r["differences"]:
            notes.append(
                f"  {st['pods']} pods, {r['variant']}: first differences "
                f"(of {r['difference_count']}):"
            )
            notes.extend(f"    {d}" for d in r["differences"])
    print(
        "(lines s/n: connections septum/nca printed, one per pair or external range; "
        "nca MiB on a timeout: at the kill)"
    )
    for n in notes:
        print(n)
    print(out["headline"])


def standin(directory: Path, nca: str | None) -> int:
    """Print DIR's connectivity as network-config-analyzer computes it, in connlist text."""
    path = nca or _venv_tool("nca")
    if path is None:
        print("network-config-analyzer is not installed", file=sys.stderr)
        return 2
    done = subprocess.run(nca_command(path, directory), capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode
    sys.stdout.write(format_connlist(parse_connectivity(done.stdout, nca=True)))
    return 0


def _sizes(text: str) -> list[int]:
    return [int(x.replace("k", "000")) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sizes", type=_sizes, default=[100, 1000, 10000], help="pods, e.g. 100,1k")
    p.add_argument("--repeat", type=int, default=3, help="septum runs per input (best)")
    p.add_argument("--peer-repeat", type=int, default=1, help="nca runs per input (best)")
    p.add_argument("--timeout", type=float, default=600.0, help="septum's limit per run, s")
    p.add_argument("--peer-timeout", type=float, default=600.0, help="nca's limit per run, s")
    p.add_argument("--quick", action="store_true", help="20 pods, one run each (smoke test)")
    p.add_argument("--keep", help="write the clusters and outputs here and keep them")
    p.add_argument("--septum-cmd", help="septum's command instead, {dir} for the input")
    p.add_argument("--nca", help="the nca executable (default: the venv's, else PATH)")
    p.add_argument("--no-peer", action="store_true", help="do not run network-config-analyzer")
    p.add_argument("--show-diffs", type=int, default=5, help="differences printed per row")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--standin-from-nca", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if args.standin_from_nca:
        return standin(args.standin_from_nca, args.nca)
    if args.quick:
        args.sizes, args.repeat, args.peer_repeat = [20], 1, 1
        args.peer_timeout = min(args.peer_timeout, 120.0)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        _print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
