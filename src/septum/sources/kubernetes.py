"""Read Kubernetes manifests from disk: every .yaml/.yml/.json file under a directory,
multi-document files included, then map them (:func:`septum.model.kubernetes.map_cluster`).

The reading is the only I/O; the mapping is pure. JSON is read by the YAML reader (JSON is
YAML), so positions are reported the same way for both.
"""

from __future__ import annotations

import os
from pathlib import Path

from septum.errors import Problem, ValidationError
from septum.model.documents import SourceDocument
from septum.model.kubernetes import KubernetesCluster, map_cluster
from septum.sources.yamldoc import parse_yaml

__all__ = ["load_cluster", "manifest_files"]

_SUFFIXES = (".yaml", ".yml", ".json")


def manifest_files(path: Path) -> list[Path]:
    """The manifest files under ``path`` (sorted by relative path); a file is its own list."""
    if not path.is_dir():
        return [path]
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root, f) for f in files
                     if not f.startswith(".") and f.lower().endswith(_SUFFIXES))
    return sorted(found, key=lambda p: p.relative_to(path).parts)


def load_cluster(path: Path) -> KubernetesCluster:
    """Read and map the manifests at ``path``. Raises ValidationError (file, line, column)
    for unreadable files, YAML/JSON syntax errors and objects that cannot be mapped."""
    if not path.exists():
        raise ValidationError([Problem(str(path), 1, 1, "no such file or directory")])
    documents: list[SourceDocument] = []
    problems: list[Problem] = []
    for file in manifest_files(path):
        try:
            text = file.read_bytes().decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(file), 1, 1, f"cannot read: {exc}"))
            continue
        parsed = parse_yaml(text.replace("\t", "  ") if file.suffix == ".json" else text,
                            str(file))
        documents.extend(parsed.documents)
        problems.extend(parsed.problems)
    if problems:
        raise ValidationError(problems)
    return map_cluster(documents)
