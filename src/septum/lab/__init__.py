"""The network-namespace lab: a repository's workloads as real namespaces, probed for real.

::

    repository ──► plan_lab ──► LabPlan ──► lab_up: namespaces, veths, bridges (netns),
      (files)       (pure)                   one node per workload, one agent per enforcer
                                                   │
    probe_lab ──► probe_set × Evaluator.explain ───┴──► nodes connect (TCP, UDP, v4, v6)
                                                          └──► ProbeReport: matrix and
                                                               disagreements
    lab_down ──► every process and namespace of the lab, and its state directory, removed

Modules: ``plan`` (pure: which namespaces, names, addresses), ``netns`` (the ``ip``
commands), ``node`` (the process inside each namespace; standard library only), ``control``
(state directory, processes, agents, up/down), ``probe`` (probe set, predictions, report).

Names are imported lazily, so that ``python -m septum.lab.node`` (one per workload) does not
pay for the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from septum.lab.control import (
        AgentStatus,
        LabDownReport,
        LabUpReport,
        default_prefix,
        default_state_dir,
        lab_down,
        lab_up,
    )
    from septum.lab.plan import LabEndpoint, LabError, LabPlan, plan_lab
    from septum.lab.probe import MatrixCell, Probe, ProbeReport, ProbeResult, probe_lab

__all__ = [
    "AgentStatus",
    "LabDownReport",
    "LabEndpoint",
    "LabError",
    "LabPlan",
    "LabUpReport",
    "MatrixCell",
    "Probe",
    "ProbeReport",
    "ProbeResult",
    "default_prefix",
    "default_state_dir",
    "lab_down",
    "lab_up",
    "plan_lab",
    "probe_lab",
]

_HOME = {
    **dict.fromkeys(
        (
            "AgentStatus",
            "LabDownReport",
            "LabUpReport",
            "default_prefix",
            "default_state_dir",
            "lab_down",
            "lab_up",
        ),
        "septum.lab.control",
    ),
    **dict.fromkeys(("LabEndpoint", "LabError", "LabPlan", "plan_lab"), "septum.lab.plan"),
    **dict.fromkeys(
        ("MatrixCell", "Probe", "ProbeReport", "ProbeResult", "probe_lab"), "septum.lab.probe"
    ),
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'septum.lab' has no attribute {name!r}")
