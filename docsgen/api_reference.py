"""The HTTP API reference: the app's OpenAPI schema rendered as Markdown, at every docs build.

Operations are grouped by their first tag, in the order the app declares its routes; each lists its parameters,
request body and responses, and names its schemas, which follow with their fields. Nothing needs JavaScript:
the running API serves the interactive view at ``/docs``.
"""

from __future__ import annotations

import json
from typing import Any

from docsgen.markdown import code, escape_text, table_cell

_METHODS = ("get", "post", "put", "patch", "delete")
_REF_PREFIX = "#/components/schemas/"


def schema_anchor(name: str) -> str:
    """Return the anchor of a schema's heading on the page."""
    return "schema-" + name.lower().replace("_", "-").replace(".", "-")


def operation_anchor(method: str, path: str) -> str:
    """Return the anchor of an operation's heading, e.g. ``post-jobs-job_id-cancel``."""
    slug = "".join(char if char.isalnum() or char == "_" else "-" for char in path.strip("/"))
    return f"{method.lower()}-{'-'.join(part for part in slug.split('-') if part) or 'root'}"


def _schema_link(name: str) -> str:
    return f"[{name}](#{schema_anchor(name)})"


def type_text(schema: dict[str, Any]) -> str:
    """Return a short type for a JSON schema: ``string``, ``array of integer``, a link to a named schema."""
    if "$ref" in schema:
        return _schema_link(schema["$ref"].removeprefix(_REF_PREFIX))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [option for option in schema[key] if option.get("type") != "null"]
            text = " or ".join(type_text(option) for option in options) or "null"
            return f"{text} (nullable)" if len(options) < len(schema[key]) else text
    if "enum" in schema:
        return "one of " + ", ".join(code(json.dumps(value)) for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_text(schema.get('items', {}))}"
    if isinstance(kind, list):
        return " or ".join(str(item) for item in kind)
    if kind == "string" and schema.get("format"):
        return f"string ({schema['format']})"
    return str(kind or "any")


def _bounds(schema: dict[str, Any]) -> str:
    """Return a schema's bounds, e.g. ``≥ 1, ≤ 10000``, looking into a nullable ``anyOf``."""
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            schema = {**option, **{k: v for k, v in schema.items() if k != "anyOf"}}
    parts = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
    ):
        if key in schema:
            value = schema[key]
            parts.append(f"{sign} {int(value) if isinstance(value, float) and value.is_integer() else value}")
    if "default" in schema:
        parts.append(f"default {code(json.dumps(schema['default']))}")
    return ", ".join(parts)


def _description(schema: dict[str, Any]) -> str:
    text = schema.get("description", "")
    if not text:
        for option in schema.get("anyOf", []):
            text = text or option.get("description", "")
    return text


def _body_schemas(content: dict[str, Any]) -> list[str]:
    """Return one line per media type of a request or response body, naming its schema."""
    lines = []
    for media_type, body in content.items():
        schema = body.get("schema")
        lines.append(f"{code(media_type)}: {type_text(schema)}" if schema else code(media_type))
    return lines


def _render_parameters(parameters: list[dict[str, Any]]) -> list[str]:
    lines = ["| Parameter | In | Type | Required | Description |", "| --- | --- | --- | --- | --- |"]
    for parameter in parameters:
        schema = parameter.get("schema", {})
        type_cell = type_text(schema)
        bounds = _bounds(schema)
        if bounds:
            type_cell += f"; {bounds}"
        lines.append(
            f"| {code(parameter['name'])} | {parameter['in']} | {table_cell(type_cell)} | "
            f"{'yes' if parameter.get('required') else 'no'} | "
            f"{table_cell(parameter.get('description') or _description(schema))} |"
        )
    return [*lines, ""]


def _render_responses(responses: dict[str, Any]) -> list[str]:
    lines = ["| Status | Meaning | Body |", "| --- | --- | --- |"]
    for status in sorted(responses):
        response = responses[status]
        bodies = "; ".join(_body_schemas(response.get("content", {})))
        lines.append(f"| {status} | {table_cell(response.get('description', ''))} | {table_cell(bodies)} |")
    return [*lines, ""]


def render_operation(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    """Return the Markdown of one operation: heading, description, parameters, body, responses."""
    title = operation.get("summary") or operation.get("operationId", "")
    lines = [f"### `{method.upper()} {path}` {{#{operation_anchor(method, path)}}}", ""]
    lines += [f"**{escape_text(title)}**" + (" (no API key needed)" if not operation.get("security") else ""), ""]
    if operation.get("description"):
        lines += [escape_text(operation["description"]), ""]
    if operation.get("parameters"):
        lines += _render_parameters(operation["parameters"])
    body = operation.get("requestBody")
    if body:
        required = " (required)" if body.get("required") else ""
        lines += [f"Request body{required}:", ""]
        lines += [f"- {line}" for line in _body_schemas(body.get("content", {}))] + [""]
    lines += _render_responses(operation.get("responses", {}))
    return lines


def render_schema(name: str, schema: dict[str, Any]) -> list[str]:
    """Return the Markdown of one component schema: its description and a table of its fields."""
    lines = [f"### {name} {{#{schema_anchor(name)}}}", ""]
    if schema.get("description"):
        lines += [escape_text(schema["description"]), ""]
    if "enum" in schema:
        return [*lines, "One of " + ", ".join(code(json.dumps(value)) for value in schema["enum"]) + ".", ""]
    properties = schema.get("properties", {})
    if not properties:
        return [*lines, f"Type: {type_text(schema)}", ""]
    required = set(schema.get("required", []))
    lines += ["| Field | Type | Required | Description |", "| --- | --- | --- | --- |"]
    for field, field_schema in properties.items():
        type_cell = type_text(field_schema)
        bounds = _bounds(field_schema)
        if bounds:
            type_cell += f"; {bounds}"
        lines.append(
            f"| {code(field)} | {table_cell(type_cell)} | {'yes' if field in required else 'no'} | "
            f"{table_cell(_description(field_schema))} |"
        )
    if schema.get("additionalProperties") is False:
        lines += ["", "Unknown fields are rejected."]
    return [*lines, ""]


def render(openapi: dict[str, Any]) -> str:
    """Return the API reference page for an OpenAPI schema."""
    info = openapi.get("info", {})
    groups: dict[str, list[str]] = {}
    for path, operations in openapi.get("paths", {}).items():
        for method in _METHODS:
            if method in operations:
                tag = (operations[method].get("tags") or ["other"])[0]
                groups.setdefault(tag, []).extend(render_operation(method, path, operations[method]))
    out = [
        "# API reference",
        "",
        f"{escape_text(info.get('summary') or info.get('description') or '')} "
        f"Generated from the OpenAPI schema of `app.main:app` (version {info.get('version', '?')}) when the "
        "site is built. A running API serves the same schema at `/openapi.json` and an interactive view at "
        "`/docs`. Unless auth is off, every operation not marked otherwise needs `Authorization: Bearer "
        "<key>` (see [Keys and tenants](../guide/keys-and-tenants.md)).",
        "",
    ]
    for tag, lines in groups.items():
        out += [f"## {escape_text(tag[:1].upper() + tag[1:])}", "", *lines]
    schemas = openapi.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name in sorted(schemas):
            out += render_schema(name, schemas[name])
    return "\n".join(out)
