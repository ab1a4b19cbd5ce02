"""Kubernetes manifests on disk: read every .yaml/.yml/.json file under a directory,
multi-document files included, then map them (:func:`septum.model.kubernetes.map_cluster`);
write imported repositories and rendered manifests back.

The reading is the only I/O; the mapping is pure. JSON is read by the YAML reader (JSON is
YAML), so positions are reported the same way for both.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from septum.errors import Problem, ValidationError
from septum.model.documents import SourceDocument
from septum.model.dump import repository_documents
from septum.model.kubernetes import KubernetesCluster, map_cluster
from septum.model.resources import Repository
from septum.render.manifests import Rendering
from septum.sources.files import load_repository
from septum.sources.yamldoc import parse_yaml

__all__ = [
    "load_cluster",
    "load_input",
    "manifest_files",
    "rendering_files",
    "write_rendering",
    "write_repository",
]

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


def write_repository(repo: Repository, out_dir: Path) -> Path:
    """Write ``repo`` as a Septum repository (one YAML file per kind of resource) into
    ``out_dir``, created if needed. Files are written whole to a temporary name first, then
    renamed, so a reader never sees half a file."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in repository_documents(repo):
        by_kind[str(doc["kind"]).lower()].append(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    for kind, docs in sorted(by_kind.items()):
        text = yaml.dump_all(docs, Dumper=dumper, sort_keys=False, default_flow_style=None,
                             width=100)
        _write_whole(out_dir / f"{kind}s.yaml", text)
    return out_dir


def rendering_files(rendering: Rendering) -> dict[str, str]:
    """The files of a rendering: its own (e.g. Terraform) or its manifests as one
    multi-document YAML file named after the target."""
    if rendering.files:
        return dict(rendering.files)
    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump_all(list(rendering.manifests), Dumper=dumper, sort_keys=False,
                         default_flow_style=False, width=100)
    return {f"{rendering.target}.yaml": text}


def write_rendering(rendering: Rendering, out_dir: Path) -> list[str]:
    """Write the rendering's files into ``out_dir``; returns their names."""
    files = rendering_files(rendering)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        _write_whole(out_dir / name, text)
    return sorted(files)


def _write_whole(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_SEPTUM_API = re.compile(r"""^\s*["']?apiVersion["']?\s*:\s*["']?septum/v1""", re.MULTILINE)


def load_input(path: Path) -> Repository | KubernetesCluster:
    """A Septum repository or a Kubernetes cluster, told apart by content: any document
    with ``apiVersion: septum/v1`` makes it a Septum repository."""
    if not path.exists():
        raise ValidationError([Problem(str(path), 1, 1, "no such file or directory")])
    for file in manifest_files(path):
        try:
            if _SEPTUM_API.search(file.read_text(encoding="utf-8", errors="replace")):
                return load_repository(path)
        except OSError:
            continue
    return load_cluster(path)
