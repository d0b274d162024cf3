"""Deterministic answers to any DSPy signature, as DSPy's adapters parse them.

Data flow: messages -> (output fields parsed from the system prompt, input
values parsed from the last user message, a digest of the conversation)
-> one Python value per output field -> rendered in ChatAdapter form
(`[[ ## name ## ]]` sections) or as one JSON object (JSONAdapter, or any
request whose response_format asks for JSON).

Everything here is pure: the same messages always give the same text, so
tests can assert on answers and benchmarks measure the pool, not a model.
One task family (`learnable.py`: `word -> code` and instruction proposals
about it) is answered by a hidden rule with an accuracy that rises with
demos and a key phrase, so optimizers have something measurable to improve.
The field types come from DSPy's own prompt: the `(type)` after each output
field name, and the `# note: ...` DSPy appends for non-str fields (a JSON
schema for lists, dicts and models; "one of: ..." for enums).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dspy_pool.simlm import learnable

ECHO_MARKER = "SIM_ECHO"

_OUTPUTS_HEADING = "Your output fields are:\n"
_OUTPUTS_END = ("\nAll interactions will be structured", "\nIn adhering to this structure")
_FIELD_LINE = re.compile(r"^\d+\. `([^`]+)` \(")
_FIELD_HEADER = re.compile(r"^\[\[ ## (\w+) ## \]\]\n?", re.MULTILINE)
_TRAILER = re.compile(r"\n*Respond with (?:the corresponding output fields|a JSON object)")
_NOTE = "        # note: the value you produce "
_SCHEMA_NOTE = "must adhere to the JSON schema: "
_ONE_OF_NOTE = "must be one of: "
_STREAM_PIECE = re.compile(r"\s*\S+|\s+")
_JSON_PROMPT_MARKERS = ("Outputs will be a JSON object", "Respond with a JSON object")


@dataclass(frozen=True, slots=True)
class OutputField:
    """One output field as DSPy described it: name, annotation name, and note."""

    name: str
    type_name: str
    note: str = ""


def complete(messages: list[dict], response_format: dict | None = None) -> str:
    """The assistant text for a chat conversation (OpenAI-style message dicts)."""
    system = "\n".join(message_text(m) for m in messages if m.get("role") == "system")
    last_user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    fields = parse_output_fields(system)
    # A plain chat (no DSPy input blocks) is answered about its whole last message.
    inputs = parse_inputs(last_user) or ({"message": last_user} if last_user else {})
    seed = conversation_digest(messages)
    # The learnable task family (learnable.py) decides its own fields; None for every other prompt.
    learned = learnable.field_values(messages, system, fields, inputs) if fields else None
    values = {f.name: learned[f.name] if learned and f.name in learned else field_value(f, seed, inputs) for f in fields}
    if wants_json(response_format, system, last_user):
        return json.dumps(values or {"answer": sentence(seed, "answer", inputs)}, ensure_ascii=False)
    if not fields:
        return learnable.plain_reply(messages, last_user) or sentence(seed, "answer", inputs)
    return render_chat(values)


def count_tokens(text: str) -> int:
    """A rough token count for the usage block: whitespace-separated words (cheap on the hot path)."""
    return len(text.split())


def stream_pieces(text: str) -> list[str]:
    """Word-sized pieces that join back to text: what a streaming answer sends, delta by delta.

    Word-sized deltas let DSPy's StreamListener find field markers and emit
    partial fields as it would with a real model.
    """
    return _STREAM_PIECE.findall(text)


def message_text(message: dict) -> str:
    """The text of one message; content may be a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def conversation_digest(messages: list[dict]) -> bytes:
    """A digest of every role and text, so any change of input changes the answer."""
    h = hashlib.sha256()
    for m in messages:
        h.update(str(m.get("role", "")).encode())
        h.update(b"\0")
        h.update(message_text(m).encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    return h.digest()


@lru_cache(maxsize=512)
def _parse_output_fields(system: str) -> tuple[OutputField, ...]:
    start = system.find(_OUTPUTS_HEADING)
    if start < 0:
        return ()
    block = system[start + len(_OUTPUTS_HEADING):]
    ends = [i for i in (block.find(e) for e in _OUTPUTS_END) if i >= 0]
    block = block[: min(ends)] if ends else block
    fields = []
    for line in block.splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            name = match.group(1)
            type_name = _balanced(line, match.end() - 1)
            fields.append(OutputField(name, type_name, _field_note(system, name)))
    return tuple(fields)


def parse_output_fields(system: str) -> list[OutputField]:
    """The output fields listed under "Your output fields are:" (cached per prompt)."""
    return list(_parse_output_fields(system))


def _balanced(line: str, open_at: int) -> str:
    """The text inside the parenthesis at open_at; the type may hold brackets and quotes."""
    depth, quote, i = 0, "", open_at
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return line[open_at + 1 : i]
        i += 1
    return line[open_at + 1 :]


def _field_note(system: str, name: str) -> str:
    """DSPy's "# note: the value you produce ..." for a field, unescaped for JSONAdapter."""
    placeholder = "{" + name + "}" + _NOTE
    at = system.find(placeholder)
    if at < 0:
        return ""
    rest = system[at + len(placeholder):].split("\n", 1)[0]
    if rest.endswith('",') or rest.endswith('"'):
        # JSONAdapter writes the structure as a JSON object: the note is a string value.
        try:
            return json.loads('"' + rest.rstrip(",")[:-1] + '"')
        except json.JSONDecodeError:
            return rest
    return rest


def parse_inputs(user_text: str) -> dict[str, str]:
    """Input values from the `[[ ## name ## ]]` blocks of the last user message."""
    trailer = _TRAILER.search(user_text)
    text = user_text[: trailer.start()] if trailer else user_text
    headers = list(_FIELD_HEADER.finditer(text))
    inputs = {}
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        value = text[match.end():end]
        inputs[match.group(1)] = value[:-2] if value.endswith("\n\n") else value
    return inputs


def wants_json(response_format: dict | None, system: str, last_user: str) -> bool:
    """JSON when the request says so, or when DSPy's JSONAdapter wrote the prompt."""
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        return True
    return any(m in system or m in last_user for m in _JSON_PROMPT_MARKERS)


def render_chat(values: dict[str, Any]) -> str:
    """ChatAdapter form: one section per field, then the completed marker."""
    parts = [f"[[ ## {name} ## ]]\n{_chat_value(v)}\n\n" for name, v in values.items()]
    return "".join(parts) + "[[ ## completed ## ]]"


def _chat_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or isinstance(value, (int, float)) or value is None:
        return str(value)
    return json.dumps(value, ensure_ascii=False)


# --- values -------------------------------------------------------------


def _field_digest(seed: bytes, name: str) -> int:
    return int.from_bytes(hashlib.sha256(seed + name.encode()).digest()[:8], "big")


def sentence(seed: bytes, name: str, inputs: dict[str, str]) -> str:
    """A str value: an echo of a SIM_ECHO input, else a sentence naming the first input."""
    for value in inputs.values():
        if ECHO_MARKER in value:
            return value
    first = next(iter(inputs.values()), "")
    gist = " ".join(first.split())[:60]
    return f"sim answer {_field_digest(seed, name) & 0xFFFFFFFF:08x} to: {gist}"


def field_value(field: OutputField, seed: bytes, inputs: dict[str, str]) -> Any:
    """A deterministic value that DSPy parses back into the field's type."""
    n = _field_digest(seed, field.name)
    t = field.type_name
    if t == "str":
        return sentence(seed, field.name, inputs)
    if t == "int":
        return n % 1000
    if t == "float":
        return (n % 100000) / 100
    if t == "bool":
        return bool(n & 1)
    if t.startswith("Literal["):
        options = _literal_options(t)
        if options:
            return options[n % len(options)]
    if field.note.startswith(_ONE_OF_NOTE):
        options = field.note[len(_ONE_OF_NOTE):].split("; ")
        return options[n % len(options)]
    if field.note.startswith(_SCHEMA_NOTE):
        try:
            schema = json.loads(field.note[len(_SCHEMA_NOTE):])
        except json.JSONDecodeError:
            schema = None
        if isinstance(schema, dict):
            return from_schema(schema, schema, n, lambda: sentence(seed, field.name, inputs))
    return sentence(seed, field.name, inputs)


def _literal_options(type_name: str) -> list[Any]:
    try:
        options = ast.literal_eval("(" + type_name[len("Literal["):-1] + ",)")
    except (ValueError, SyntaxError):
        return []
    return list(options)


def from_schema(schema: dict, root: dict, n: int, text, depth: int = 0) -> Any:
    """A value valid for a JSON schema (the subset pydantic emits), chosen by n."""
    if depth > 8:
        return None
    if "$ref" in schema:
        target = _resolve_ref(root, schema["$ref"])
        return from_schema(target, root, n, text, depth + 1) if target is not None else None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema and schema["enum"]:
        return schema["enum"][n % len(schema["enum"])]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return from_schema(options[0], root, n, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return text()
    if kind == "integer":
        return n % 1000
    if kind == "number":
        return (n % 100000) / 100
    if kind == "boolean":
        return bool(n & 1)
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        count = min(max(schema.get("minItems", 0), 2), schema.get("maxItems", 2))
        return [from_schema(items, root, n >> i, text, depth + 1) for i in range(count)]
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        return _object_from_schema(schema, root, n, text, depth)
    if kind == "null":
        return None
    return text()


def _object_from_schema(schema: dict, root: dict, n: int, text, depth: int) -> dict:
    properties = schema.get("properties") or {}
    if properties:
        return {k: from_schema(s, root, n >> (i % 32), text, depth + 1) for i, (k, s) in enumerate(properties.items())}
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        return {"key": from_schema(extra, root, n, text, depth + 1)}
    return {}


def _resolve_ref(root: dict, ref: str) -> dict | None:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None
