"""Prompt and JSON-schema pairs with enums, nested objects, arrays, numbers and optional fields: the cases the
constrained-decoding benchmark (``bench_constrained``) runs and the structured-output serve tests check."""

from __future__ import annotations

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
