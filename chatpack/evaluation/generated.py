"""Deterministic generators of eval prompts with verifiable answers: arithmetic, unit conversion, formatting rules and
extraction from a given passage.

``python -m chatpack.evaluation.generated`` rewrites ``data/eval_prompts.jsonl`` as the hand-written rows (those whose
id does not start with ``gen-``) followed by :func:`generate_rows` (seeded: the same rows every time; a test checks the
shipped file equals them). Each row carries a small ``max_tokens``: the answers are short, and the budget keeps a
rambling model from making the evaluation slow.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from chatpack.evaluation.data import DEFAULT_EVAL_DATA

SEED = 15
PER_KIND = 75
PREFIX = "gen-"
SHORT, LONG = 16, 40  # reply budgets (tokens) for one-value answers and for formatted answers

NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Olga", "Pedro", "Fatima", "Liam", "Chen", "Nora", "Ivan", "Zara", "Omar",
         "Elena", "Sam", "Ruth", "Hugo", "Mei", "Jonas", "Leila"]
CITIES = ["Lisbon", "Oslo", "Cairo", "Lima", "Dublin", "Prague", "Nairobi", "Toronto", "Madrid", "Vienna", "Seoul",
          "Athens", "Berlin", "Quito", "Helsinki", "Manila"]
JOBS = ["baker", "nurse", "pilot", "teacher", "plumber", "farmer", "dentist", "librarian", "chef", "carpenter"]
COLOURS = ["green", "blue", "red", "yellow", "purple", "orange", "black", "white"]
PETS = ["Biscuit", "Pepper", "Luna", "Max", "Coco", "Rusty", "Daisy", "Milo"]
WORDS = ["apple", "river", "garden", "window", "pencil", "rocket", "castle", "forest", "candle", "ladder", "tiger",
         "bottle", "planet", "guitar", "mirror"]
TOPICS = ["cats", "the sea", "trains", "winter", "coffee", "music", "bicycles", "rain"]
CATEGORIES = {"fruits": ["apple", "banana", "cherry"], "colours": ["red", "green", "blue"],
              "animals": ["dog", "cat", "horse"], "countries": ["France", "Japan", "Peru"]}
JUST_NUMBER = "Reply with just the number."


def _row(kind: str, n: int, prompt: str, reference: str, rules: list[dict[str, Any]] | None = None,
         max_tokens: int = SHORT) -> dict[str, Any]:
    row: dict[str, Any] = {"id": f"{PREFIX}{kind}-{n:03d}", "category": kind,
                           "messages": [{"role": "user", "content": prompt}], "reference": reference}
    if rules:
        row["rules"] = rules
    row["max_tokens"] = max_tokens
    return row


def arithmetic(rng: random.Random, n: int) -> dict[str, Any]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    shown = {"+": "plus", "-": "minus", "*": "times"}[op]
    prompt = rng.choice([f"What is {a} {op} {b}? {JUST_NUMBER}", f"Calculate {a} {shown} {b}. {JUST_NUMBER}"])
    return _row("arithmetic", n, prompt, str(value))


CONVERSIONS = [  # (question template, factor, value range)
    ("How many centimetres are in {v} metres?", 100, (2, 9)),
    ("How many grams are in {v} kilograms?", 1000, (2, 9)),
    ("How many minutes are in {v} hours?", 60, (2, 9)),
    ("How many seconds are in {v} minutes?", 60, (2, 9)),
    ("How many days are in {v} weeks?", 7, (2, 9)),
    ("How many metres are in {v} kilometres?", 1000, (2, 9)),
    ("How many millilitres are in {v} litres?", 1000, (2, 9)),
    ("How many months are in {v} years?", 12, (2, 9)),
]


def conversion(rng: random.Random, n: int) -> dict[str, Any]:
    if rng.random() < 0.2:  # Celsius to Fahrenheit on multiples of 5: whole answers
        c = rng.choice(range(0, 101, 5))
        return _row("conversion", n, f"What is {c} degrees Celsius in degrees Fahrenheit? {JUST_NUMBER}",
                    str(c * 9 // 5 + 32))
    template, factor, (lo, hi) = rng.choice(CONVERSIONS)
    v = rng.randint(lo, hi)
    return _row("conversion", n, f"{template.format(v=v)} {JUST_NUMBER}", str(v * factor))


def formatting(rng: random.Random, n: int) -> dict[str, Any]:
    kind = n % 6
    word = rng.choice(WORDS)
    if kind == 0:
        return _row("formatting", n, f"Write the word '{word}' in capital letters and nothing else.", word.upper(),
                    [{"type": "uppercase"}, {"type": "contains", "value": word.upper()}])
    if kind == 1:
        category, example = rng.choice(list(CATEGORIES.items()))
        count = rng.choice([2, 3, 4])
        return _row("formatting", n, f"List {count} {category}, separated by commas, and nothing else.",
                    ", ".join((example * 2)[:count]), [{"type": "comma_items", "value": count}], LONG)
    if kind == 2:
        city = rng.choice(CITIES)
        return _row("formatting", n, f'Reply with a JSON object whose key "city" has the value "{city}".',
                    json.dumps({"city": city}), [{"type": "json_object"}, {"type": "contains", "value": city}], LONG)
    if kind == 3:
        topic = rng.choice(TOPICS)
        count = rng.choice([2, 3])
        return _row("formatting", n, f"Give exactly {count} bullet points about {topic}, each line starting with "
                                     "'- ', and nothing else.",
                    "\n".join(f"- point {i + 1}" for i in range(count)), [{"type": "bullet_count", "value": count}],
                    LONG)
    if kind == 4:
        sentence = f"THE {word.upper()} IS ON THE TABLE."
        return _row("formatting", n, f"Rewrite this sentence in lowercase letters only: {sentence}",
                    sentence.lower(), [{"type": "lowercase"}, {"type": "contains", "value": f"the {word}"}], LONG)
    start = rng.choice(["Today", "Yesterday", "Tomorrow", "Sometimes"])
    return _row("formatting", n, f"Write one short sentence that starts with the word '{start}'.",
                f"{start} I went for a walk.", [{"type": "starts_with", "value": start},
                                                 {"type": "max_words", "value": 20}], LONG)


def extraction(rng: random.Random, n: int) -> dict[str, Any]:
    name, city, job = rng.choice(NAMES), rng.choice(CITIES), rng.choice(JOBS)
    colour, pet, age = rng.choice(COLOURS), rng.choice(PETS), rng.randint(21, 79)
    passage = (f"{name} is {age} years old and lives in {city}. {name} works as a {job}. {name}'s favourite colour "
               f"is {colour}, and {name}'s dog is called {pet}.")
    question, answer = rng.choice([
        (f"Which city does {name} live in? Answer with the city only.", city),
        (f"How old is {name}? {JUST_NUMBER}", str(age)),
        (f"What is {name}'s job? Answer in one word.", job),
        (f"What is {name}'s favourite colour? Answer in one word.", colour),
        (f"What is the name of {name}'s dog? Answer in one word.", pet),
    ])
    return _row("extraction", n, f"Read the passage and answer the question.\n\nPassage: {passage}\n\n"
                                 f"Question: {question}", answer)


GENERATORS = {"arithmetic": arithmetic, "conversion": conversion, "formatting": formatting, "extraction": extraction}


def generate_rows(seed: int = SEED, per_kind: int = PER_KIND) -> list[dict[str, Any]]:
    """``per_kind`` rows from each generator, from one seeded random stream: the same rows on every machine."""
    rng = random.Random(seed)
    return [generator(rng, n) for kind, generator in GENERATORS.items() for n in range(1, per_kind + 1)]


def hand_written_rows(path: Path = DEFAULT_EVAL_DATA) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()
            if line.strip() and not json.loads(line)["id"].startswith(PREFIX)]


def render(path: Path = DEFAULT_EVAL_DATA) -> str:
    """The shipped eval set's text: hand-written rows, then the generated ones."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in hand_written_rows(path) + generate_rows())


def main() -> int:
    DEFAULT_EVAL_DATA.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
