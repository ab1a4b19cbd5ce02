"""Helpers for tests against the real kernel: nft inside a network namespace a test made.

The namespace fixture (``netns`` in conftest.py) names namespaces with a per-run prefix and
deletes them when the test ends, even when it fails. Nothing here sends traffic.
"""

from __future__ import annotations

import json
import subprocess


def ns_nft(ns: str, *args: str, stdin: str | None = None) -> str:
    """Run nft inside namespace ``ns``; fail the test with nft's message on error."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + (stdin or "")[-3000:]
    return proc.stdout


def _json_element(e: object) -> str:
    if isinstance(e, str):
        return e
    assert isinstance(e, dict)
    if "prefix" in e:
        return f"{e['prefix']['addr']}/{e['prefix']['len']}"
    if "range" in e:
        return f"{e['range'][0]}-{e['range'][1]}"
    raise AssertionError(e)


def kernel_state(ns: str) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """What the kernel holds for ``table inet septum``: set/map name → elements as text, and
    the rules as (chain, rule without handle and counter values), chains sorted by name,
    rules in their order within each chain."""
    data = json.loads(ns_nft(ns, "-j", "list", "table", "inet", "septum"))
    elements: dict[str, set[str]] = {}
    rules: list[tuple[str, str]] = []
    for item in data["nftables"]:
        for kind in ("set", "map"):
            if kind in item:
                s = item[kind]
                out: set[str] = set()
                for e in s.get("elem", []):
                    if kind == "map":
                        key, verdict = e
                        out.add(f"{_json_element(key)} : goto {verdict['goto']['target']}")
                    else:
                        out.add(_json_element(e))
                elements[s["name"]] = out
        if "rule" in item:
            r = item["rule"]
            exprs = [x for x in r["expr"] if "counter" not in x]
            rules.append((r["chain"], json.dumps(exprs, sort_keys=True) + r.get("comment", "")))
    chains = sorted({c for c, _ in rules})
    return elements, [(c, text) for c in chains for cc, text in rules if cc == c]
