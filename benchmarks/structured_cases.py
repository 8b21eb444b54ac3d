"""Prompt and JSON-schema pairs with enums, nested objects, arrays, numbers and optional fields: the cases the
constrained-decoding benchmark (``bench_constrained``) runs and the structured-output serve tests check; and the
agent load ``bench_serve`` sends (structured outputs, forced tool calls, plain requests) with its validity check."""

from __future__ import annotations

import json
from typing import Any

STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}


def obj(required: dict, optional: dict | None = None) -> dict:
    """An object schema with ``required`` and ``optional`` properties."""
    return {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required)}


CASES = [
    ("What is the capital of France?", obj({"city": STR, "country": STR})),
    ("Give the capital of Japan and its population in millions.", obj({"city": STR, "population_millions": NUM})),
    ("Is the sun a star?", obj({"answer": BOOL})),
    ("What colour is the sky on a clear day?", obj({"colour": {"enum": ["red", "green", "blue", "yellow"]}})),
    ("Rate the movie Titanic from 1 to 5.", obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}})),
    ("How many legs does a spider have?", obj({"legs": INT})),
    ("List three fruits.", obj({"fruits": {"type": "array", "items": STR, "minItems": 3, "maxItems": 3}})),
    ("Describe a dog: its name, age and breed.", obj({"name": STR, "age": INT}, {"breed": STR})),
    ("Give me a person with an address.", obj({"name": STR, "address": obj({"street": STR, "city": STR},
                                                                          {"zip": STR})})),
    ("What is 12 times 12?", obj({"result": INT})),
    ("Convert 100 degrees Fahrenheit to Celsius.", obj({"celsius": NUM, "unit": {"const": "C"}})),
    ("Is Python a programming language? Give a confidence.", obj({"answer": BOOL, "confidence": {
        "type": "number", "minimum": 0, "maximum": 1}})),
    ("Name a planet and say whether it has rings.", obj({"planet": {"enum": ["Mercury", "Venus", "Earth", "Mars",
                                                                           "Jupiter", "Saturn", "Uranus",
                                                                           "Neptune"]}, "rings": BOOL})),
    ("Give two book recommendations with authors.", obj({"books": {"type": "array", "maxItems": 2, "items": obj(
        {"title": STR, "author": STR})}})),
    ("Classify the sentiment of: I love this phone!", obj({"sentiment": {"enum": ["positive", "negative",
                                                                                  "neutral"]}})),
    ("Extract the date from: The meeting is on 2024-05-17.", obj({"date": {"type": "string",
                                                                           "pattern": "^\\d{4}-\\d{2}-\\d{2}$"}})),
    ("What is the boiling point of water?", obj({"value": NUM, "unit": {"enum": ["C", "F", "K"]}})),
    ("Make a shopping list with quantities.", obj({"items": {"type": "array", "maxItems": 4, "items": obj(
        {"name": STR, "quantity": {"type": "integer", "minimum": 1}})}})),
    ("Describe the weather today.", obj({"condition": {"enum": ["sunny", "cloudy", "rainy", "snowy"]}},
                                        {"temperature": NUM, "windy": BOOL})),
    ("Tell me about the Eiffel Tower.", obj({"name": STR, "location": obj({"city": STR, "country": STR}),
                                             "height_m": NUM})),
    ("Give a user profile.", obj({"username": {"type": "string", "maxLength": 20}, "tags": {
        "type": "array", "items": {"enum": ["admin", "editor", "viewer"]}, "maxItems": 3}}, {"active": BOOL})),
    ("Pick a number between 1 and 10.", obj({"number": {"type": "integer", "minimum": 1, "maximum": 10}})),
    ("Translate 'hello' to French and Spanish.", obj({"french": STR, "spanish": STR})),
    ("What are the primary colours?", obj({"colours": {"type": "array", "items": STR, "maxItems": 3},
                                           "count": INT})),
]


# -- the agent load: structured outputs, forced tool calls and plain requests, as agent frameworks send them ---------
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a fact up",
                                           "parameters": obj({"query": STR})}},
         {"type": "function", "function": {"name": "calculate", "description": "Evaluate an arithmetic expression",
                                           "parameters": obj({"expression": STR})}}]


def agent_bodies(n: int, max_tokens: int, first: int = 0) -> list[dict[str, Any]]:
    """``n`` greedy whole-reply requests numbered from ``first`` (each prompt unique): request i is a
    ``json_schema`` structured output when i % 3 == 0 (the cases above, strict), a tool call with
    ``tool_choice: required`` when i % 3 == 1, and a plain short question otherwise."""
    bodies = []
    for i in range(n):
        k = first + i
        body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0}
        if i % 3 == 0:
            prompt, schema = CASES[k % len(CASES)]
            body.update(messages=[{"role": "user", "content": f"Question {k}. {prompt}"}],
                        response_format={"type": "json_schema", "json_schema": {
                            "name": "answer", "schema": schema, "strict": True}})
        elif i % 3 == 1:
            body.update(messages=[{"role": "user", "content": f"What is {k} times 7, and what is {k} known for?"}],
                        tools=TOOLS, tool_choice="required")
        else:
            body["messages"] = [{"role": "user", "content": f"Tell me one fact about the number {k}."}]
        bodies.append(body)
    return bodies


def check_reply(body: dict[str, Any], text: str, tool_calls: list[dict[str, Any]] | None,
                finish_reason: str | None = None) -> tuple[bool | None, str]:
    """(valid, why not) for a reply to ``body`` (valid None: the request had no constraint). Valid: the reply parses
    as JSON and validates against the ``json_schema``; or, with tools, it holds at least one call (OpenAI's
    ``tool_calls`` objects), each to a tool the request offered, with arguments that parse and validate against that
    tool's parameters (``tool_choice: auto`` may answer in text instead)."""
    import jsonschema

    fmt, tools = body.get("response_format") or {}, body.get("tools")
    try:
        if tools and body.get("tool_choice", "auto") != "none":
            if not tool_calls:
                ok = body.get("tool_choice", "auto") == "auto"
                return ok, "" if ok else f"no tool call (finish_reason {finish_reason}, text {text[:80]!r})"
            offered = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
            for call in tool_calls:
                name = call["function"]["name"]
                if name not in offered:
                    return False, f"unknown tool {name!r}"
                jsonschema.validate(json.loads(call["function"]["arguments"]), offered[name])
            return True, ""
        if fmt.get("type") == "json_schema":
            jsonschema.validate(json.loads(text), fmt["json_schema"]["schema"])
            return True, ""
    except (ValueError, KeyError, TypeError, jsonschema.ValidationError) as exc:
        return False, f"{type(exc).__name__}: {str(exc)[:160]} (finish_reason {finish_reason})"
    return None, ""
