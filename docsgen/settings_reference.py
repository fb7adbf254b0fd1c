"""The configuration reference: every field of ``app.core.config.Settings``, rendered as Markdown.

Read from the class itself at every docs build, so a setting added to ``Settings`` is on the page the next time
the site is built, and one removed is gone. Sections follow the comment headers of the class body (a comment
block after a blank line starts one); a field's text is its ``Field(description=...)``, else the comment right
above it. Defaults come from the field definitions, never from the environment, so a deployment's own values
(or its secrets) cannot leak into the page.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode

from docsgen.markdown import code, escape_text

ENV_PREFIX = "EMBEDQ_"
# Fields whose values are credentials: a non-empty default is never printed.
_SECRET_NAME = re.compile(r"(^|_)(api_keys?|secret|password|token|basic_auth)($|_)")
_URL_CREDENTIALS = re.compile(r"(//[^/:@]+):[^/@]+@")
_BUILTIN_NAMES: dict[type, str] = {str: "string", int: "integer", float: "number"}
_FIELD_LINE = re.compile(r"^    (\w+)\s*:")
_COMMENT_LINE = re.compile(r"^    #\s?(.*)$")


@dataclass
class Section:
    """A group of settings under one comment header of the Settings class."""

    title: str
    fields: list[str] = field(default_factory=list)


def env_name(name: str) -> str:
    """Return the environment variable that sets the field ``name``."""
    return ENV_PREFIX + name.upper()


def _section_title(comment: str) -> str:
    """Return a section header's first phrase: up to the first '.', ':' or '(' of its comment."""
    title = re.split(r"[.:(]", comment, maxsplit=1)[0].strip()
    return title[:1].upper() + title[1:] if title else "Other"


def scan_class_body(settings_cls: type[BaseSettings]) -> tuple[list[Section], dict[str, str]]:
    """Return the sections of the class body in order, and each field's comment (the block right above it)."""
    try:
        lines = inspect.getsource(settings_cls).splitlines()
    except (OSError, TypeError):
        return [], {}
    sections: list[Section] = []
    comments: dict[str, str] = {}
    block: list[str] = []
    block_after_blank = True
    previous_blank = True
    for line in lines[1:]:
        if line.startswith("    @") or line.startswith("    def "):
            break
        comment = _COMMENT_LINE.match(line)
        if comment:
            if not block:
                block_after_blank = previous_blank
            block.append(comment.group(1).strip())
            previous_blank = False
            continue
        previous_blank = not line.strip()
        match = _FIELD_LINE.match(line)
        if match and match.group(1) in settings_cls.model_fields:
            name = match.group(1)
            if block and block_after_blank:
                sections.append(Section(_section_title(block[0])))
            elif block:
                comments[name] = " ".join(block)
            if not sections:
                sections.append(Section("General"))
            sections[-1].fields.append(name)
        block = []
    return sections, comments


def _annotation_text(annotation: Any) -> str:
    """Return a reader's name for a field's type: ``int``, ``path``, one of ``"a"``, ``"b"``, ..."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(code(json.dumps(arg)) for arg in args)
    if origin in (Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        text = " or ".join(_annotation_text(arg) for arg in present)
        return f"{text} (optional)" if len(present) < len(args) else text
    if origin is list:
        return f"list of {_annotation_text(args[0]) if args else 'values'}"
    if origin is dict:
        return "JSON object"
    if isinstance(annotation, type):
        if issubclass(annotation, Path):
            return "path"
        if issubclass(annotation, Enum):
            return "one of " + ", ".join(code(str(member.value)) for member in annotation)
        if issubclass(annotation, bool):
            return "boolean"
        if annotation.__module__ != "builtins":
            return f"JSON object ({annotation.__name__})"
        return _BUILTIN_NAMES.get(annotation, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _bounds_text(info: FieldInfo) -> str:
    """Return the numeric bounds and pattern of a field, e.g. ``≥ 1, ≤ 65535``."""
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{sign} {value}")
        if getattr(meta, "pattern", None):
            bounds.append(f"matches {code(meta.pattern)}")
        if getattr(meta, "min_length", None):
            bounds.append(f"at least {meta.min_length} long")
    return ", ".join(bounds)


def type_text(info: FieldInfo) -> str:
    """Return the field's type as the page shows it, with how a list is written and its bounds."""
    text = _annotation_text(info.annotation)
    if text.startswith("list"):
        comma_separated = any(meta is NoDecode or isinstance(meta, NoDecode) for meta in info.metadata)
        text += ", comma-separated or a JSON list" if comma_separated else ", a JSON list"
    bounds = _bounds_text(info)
    return f"{text}; {bounds}" if bounds else text


def is_secret(name: str) -> bool:
    """Return whether the field holds credentials, whose default is never printed."""
    return bool(_SECRET_NAME.search(name))


def _default_value(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def default_text(name: str, info: FieldInfo) -> str:
    """Return the default as it would be written in the environment, or a note where there is none to show."""
    if info.is_required():
        return "required"
    value = _default_value(info)
    if value is None or value == [] or value == {}:
        return "unset" if value is None else "empty"
    if is_secret(name):
        return "set (not shown)"
    if isinstance(value, Path):
        home = Path.home()
        value = "~/" + str(value.relative_to(home)) if value.is_relative_to(home) else str(value)
    elif isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, list):
        value = ",".join(str(item) for item in value)
    elif isinstance(value, dict):
        value = json.dumps(value)
    elif isinstance(value, Enum):
        value = value.value
    text = _URL_CREDENTIALS.sub(r"\1:***@", str(value))
    return code(text)


def also_read(name: str, info: FieldInfo) -> list[str]:
    """Return the other environment variables the field is read from (e.g. EMB_PROVIDER_* names)."""
    alias = info.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else []
    names = dict.fromkeys(choice for choice in choices if isinstance(choice, str))
    return [other for other in names if other.upper() != env_name(name)]


def description_text(name: str, info: FieldInfo, comments: dict[str, str]) -> str:
    """Return the field's description, else the comment above it in the class body, else nothing."""
    return (info.description or comments.get(name) or "").strip()


def ordered_sections(settings_cls: type[BaseSettings]) -> list[Section]:
    """Return every field of ``settings_cls`` in sections; fields the scan missed land in a last section."""
    sections, _ = scan_class_body(settings_cls)
    seen = {name for section in sections for name in section.fields}
    missed = [name for name in settings_cls.model_fields if name not in seen]
    if missed:
        sections.append(Section("Other settings", missed))
    return sections


def render(settings_cls: type[BaseSettings]) -> str:
    """Return the configuration reference page for ``settings_cls``."""
    _, comments = scan_class_body(settings_cls)
    config = settings_cls.model_config
    out = [
        "# Configuration reference",
        "",
        "Every setting of embedq, generated from `app.core.config.Settings` when the site is built, so it lists "
        f"exactly the settings the code reads. Each is an environment variable with the prefix `{ENV_PREFIX}` "
        f"(also read from a `{config.get('env_file')}` file in the working directory). The API, the workers and "
        "the CLI read the same settings, so give every process the same values.",
        "",
        "Lists are written comma-separated or as a JSON list; objects as JSON. Credentials' defaults are never shown.",
        "",
    ]
    for section in ordered_sections(settings_cls):
        out += [f"## {escape_text(section.title)}", ""]
        for name in section.fields:
            info = settings_cls.model_fields[name]
            out += _render_field(name, info, comments)
    return "\n".join(out)


def _render_field(name: str, info: FieldInfo, comments: dict[str, str]) -> list[str]:
    variable = env_name(name)
    lines = [
        f"### `{variable}` {{#{variable.lower()}}}",
        "",
        f"Type: {escape_text(type_text(info))}  ",
        f"Default: {default_text(name, info)}",
    ]
    others = also_read(name, info)
    if others:
        lines[-1] += "  "
        lines.append("Also read from: " + ", ".join(code(other) for other in others))
    description = description_text(name, info, comments)
    if description:
        lines += ["", escape_text(description)]
    return [*lines, ""]


def field_names(settings_cls: type[BaseSettings]) -> list[str]:
    """Return the environment variable of every field of ``settings_cls``, as the page must list them."""
    return [env_name(name) for name in settings_cls.model_fields]
