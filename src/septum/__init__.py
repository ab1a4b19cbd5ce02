"""Septum: identity-based microsegmentation, policy as code.

The pipeline (dependencies point one way; the core in the middle performs no I/O)::

    sources ──► model ──────────► engine ─────────────────► render ──────► agent / targets
    YAML files   parse_documents   resolve_policy, explain,   build_host_ruleset,
    (positions)  → Repository      run_assertions, plan,      render_nft → nft script
                 (frozen)          label index (deltas)       render_set_delta → elements

Front ends (``septum.cli``) parse arguments, call one library function and format the result.
"""

from __future__ import annotations

__version__ = "0.1.0"
