"""The JSON Schema of a policy document, generated from :mod:`septum.model.documents`.

A copy ships as ``septum/schema/septum.schema.json`` for editors (YAML language servers) and
CI; ``tests/model/test_schema.py`` fails when the copy differs from what this module
generates, so the two cannot drift apart. The schema checks shape only; ``septum validate``
additionally checks selectors, CIDRs, ports, times and references between documents.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from septum.model.documents import AnyDocument

__all__ = ["SCHEMA_ID", "repository_json_schema", "schema_text"]

SCHEMA_ID = "https://septum.dev/schema/septum.schema.json"


def repository_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one document: a ``oneOf`` over ``kind``."""
    schema = TypeAdapter(AnyDocument).json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Septum policy document",
        "description": "One document of a Septum policy repository (apiVersion septum/v1).",
        **schema,
    }


def schema_text() -> str:
    """The schema as shipped: sorted keys, two-space indent, final newline."""
    return json.dumps(repository_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
