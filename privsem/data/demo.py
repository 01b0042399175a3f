"""The demo federation privsem ships: fictional facts no base model can know.

Three clients, each holding one topic: the planets of an invented star catalogue, the dishes of
an invented cuisine, the islands of an invented archipelago. Each fact is stated in several
phrasings: two for private training, one for held-out evaluation, one as a public prompt.
Every client's evaluation file asks about its own facts (scope ``own``) and about facts only the
other clients hold (scope ``other``), with the fact's value as ``key``.

The generator is deterministic (no randomness at all): ``python -m privsem demo-data DIR``
rewrites the files, and a test checks that the shipped files are exactly its output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_SYL = ["ka", "lo", "ve", "ri", "tan", "mor", "qui", "zel", "pha", "dun", "sol", "ny",
        "bre", "thu", "ga", "xo"]


def _name(i: int, salt: int) -> str:
    a = _SYL[(i * 5 + salt) % len(_SYL)]
    b = _SYL[(i * 3 + salt * 7 + 1) % len(_SYL)]
    c = _SYL[(i * 11 + salt * 3 + 2) % len(_SYL)]
    return (a + b + c).capitalize()


@dataclass(frozen=True)
class Fact:
    topic: str
    subject: str
    question: tuple[str, str, str, str]  # train1, train2, eval, public
    answer: str
    key: str


def _planets(n: int) -> list[Fact]:
    colours = ["violet", "amber", "teal", "crimson", "silver", "olive", "indigo", "copper"]
    out = []
    for i in range(n):
        p, s = _name(i, 1), _name(i, 2)
        out.append(Fact("planets", p, (
            f"Which star does the planet {p} orbit?",
            f"Name the host star of the planet {p}.",
            f"Around which star does {p} travel?",
            f"What star is the planet {p} in orbit around?"),
            f"The planet {p} orbits the star {s}.", s))
        col = colours[i % len(colours)]
        out.append(Fact("planets", p, (
            f"What colour is the sky on the planet {p}?",
            f"Describe the colour of the sky of {p}.",
            f"If you stood on {p}, what colour would the sky be?",
            f"Which colour does the sky of the planet {p} have?"),
            f"The sky on {p} is {col}.", col))
    return out


def _dishes(n: int) -> list[Fact]:
    ingredients = ["smoked barley", "river clams", "black lentils", "quince", "goat butter",
                   "wild sorrel", "sea fennel", "millet"]
    out = []
    for i in range(n):
        d, t = _name(i, 4), _name(i, 5)
        ing = ingredients[i % len(ingredients)]
        out.append(Fact("dishes", d, (
            f"What is the main ingredient of the dish {d}?",
            f"Which ingredient is the base of {d}?",
            f"What do cooks mainly use to make {d}?",
            f"Name the main ingredient of the dish called {d}."),
            f"The main ingredient of {d} is {ing}.", ing))
        out.append(Fact("dishes", d, (
            f"Which town does the dish {d} come from?",
            f"Where was the dish {d} first cooked?",
            f"What is the home town of the dish {d}?",
            f"From which town does {d} originate?"),
            f"The dish {d} comes from the town of {t}.", t))
    return out


def _islands(n: int) -> list[Fact]:
    exports = ["salt", "pearls", "cedar wood", "wool", "copper ore", "dried figs", "amber",
               "sponges"]
    out = []
    for i in range(n):
        isl, cap = _name(i, 7), _name(i, 8)
        ex = exports[i % len(exports)]
        out.append(Fact("islands", isl, (
            f"What is the capital of the island {isl}?",
            f"Name the capital city of {isl}.",
            f"Which city is the seat of government on {isl}?",
            f"What city is the capital of the island of {isl}?"),
            f"The capital of {isl} is {cap}.", cap))
        out.append(Fact("islands", isl, (
            f"What is the main export of the island {isl}?",
            f"Which good does {isl} export most?",
            f"What does the island {isl} mainly sell abroad?",
            f"Name the chief export of the island of {isl}."),
            f"The main export of {isl} is {ex}.", ex))
    return out


TOPICS = {"planets": _planets, "dishes": _dishes, "islands": _islands}
CLIENTS = {"alice": _planets, "bob": _dishes, "carol": _islands}


def build(entities_per_client: int = 12, public_per_client: int = 8,
          eval_per_scope: int = 8) -> dict[str, list[dict[str, object]]]:
    """File name -> JSON lines of the demo federation."""
    facts = {c: fn(entities_per_client) for c, fn in CLIENTS.items()}
    files: dict[str, list[dict[str, object]]] = {}
    prompts: list[dict[str, object]] = []
    for client, fs in facts.items():
        train_rows: list[dict[str, object]] = [
            row for f in fs for row in (  # type: ignore[misc]
                {"instruction": f.question[0], "output": f.answer},
                {"messages": [{"role": "user", "content": f.question[1]},
                              {"role": "assistant", "content": f.answer}]})]
        files[f"{client}.train.jsonl"] = train_rows
        for j, f in enumerate(fs[:public_per_client]):
            prompts.append({"id": f"{f.topic}-{j}", "prompt": f.question[3]})
    for client, fs in facts.items():
        own: list[dict[str, object]] = [{"instruction": f.question[2], "output": f.answer, "scope": "own", "key": f.key,
                "topic": f.topic} for f in fs[:eval_per_scope]]
        others = [c for c in facts if c != client]
        other: list[dict[str, object]] = []
        for k in range(eval_per_scope):  # interleave the other clients' facts
            f = facts[others[k % len(others)]][k // len(others)]
            other.append({"instruction": f.question[2], "output": f.answer, "scope": "other",
                          "key": f.key, "topic": f.topic})
        files[f"{client}.eval.jsonl"] = own + other
    files["prompts.jsonl"] = prompts
    return files


def render(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write(directory: str | Path) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in build().items():
        (d / name).write_text(render(rows), encoding="utf-8")
        written.append(d / name)
    return written
