"""The JSON Schema (septum.model.schema) and its shipped copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

import septum.model.schema as schema_module
from septum.model.documents import KINDS, AnyDocument
from septum.model.schema import repository_json_schema, schema_text
from septum.sources.files import repository_files

SHIPPED = Path(schema_module.__file__).resolve().parent.parent / "schema" / "septum.schema.json"
GOOD = Path(__file__).resolve().parents[1] / "corpus" / "good"
REGENERATE = (
    ".venv/bin/python -c 'from septum.model.schema import schema_text; "
    'print(schema_text(), end="")\' > src/septum/schema/septum.schema.json'
)


def test_shipped_schema_is_up_to_date() -> None:
    assert SHIPPED.read_text(encoding="utf-8") == schema_text(), f"regenerate: {REGENERATE}"


def test_schema_is_a_discriminated_union_over_kind() -> None:
    schema = repository_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["discriminator"]["propertyName"] == "kind"
    assert set(schema["discriminator"]["mapping"]) == set(KINDS)
    assert len(schema["oneOf"]) == len(KINDS)
    for kind, cls in KINDS.items():
        definition = schema["$defs"][cls.__name__]
        assert definition["properties"]["kind"]["const"] == kind
        assert definition["properties"]["apiVersion"]["const"] == "septum/v1"
        assert definition["additionalProperties"] is False
        assert {"apiVersion", "kind", "metadata"} <= set(definition["required"])


def _defs() -> dict[str, Any]:
    defs: dict[str, Any] = repository_json_schema()["$defs"]
    return defs


def test_schema_uses_yaml_spelling() -> None:
    defs = _defs()
    assert "from" in defs["IngressRule"]["properties"]
    assert "to" in defs["EgressRule"]["properties"]
    assert "appliesTo" in defs["PolicySpec"]["properties"]
    assert "defaultAction" in defs["TierSpec"]["properties"]
    assert "except" in defs["NetworkSpec"]["properties"]
    assert "namespace" in defs["WorkloadMetadata"]["properties"]
    assert "namespace" not in defs["Metadata"]["properties"]


def test_schema_carries_enumerations_and_patterns() -> None:
    defs = _defs()
    action = defs["IngressRule"]["properties"]["action"]
    assert action["enum"] == ["allow", "deny", "pass", "log"]
    assert defs["Metadata"]["properties"]["name"]["pattern"].startswith("^[a-z0-9]")
    labels = defs["Metadata"]["properties"]["labels"]
    assert "pattern" in labels["propertyNames"]
    assert defs["NetworkSpec"]["properties"]["cidrs"]["minItems"] == 1
    assert defs["PeerEntry"]["maxProperties"] == 1


def test_schema_is_json_serialisable_and_stable() -> None:
    assert json.loads(schema_text()) == repository_json_schema()
    assert schema_text() == schema_text()


@pytest.mark.parametrize("path", repository_files(GOOD), ids=lambda p: p.name)
def test_good_corpus_matches_the_document_models(path: Path) -> None:
    # The schema is generated from these models, so this also exercises the schema's shape.
    # (YAML timestamps are read as text, as septum's loader does.)
    adapter: TypeAdapter[Any] = TypeAdapter(AnyDocument)
    for document in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_TextTimes):
        adapter.validate_python(document)


class _TextTimes(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as the text written."""


_TextTimes.add_constructor(
    "tag:yaml.org,2002:timestamp",
    lambda loader, node: loader.construct_scalar(node),  # type: ignore[arg-type]
)
