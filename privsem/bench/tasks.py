"""The benchmark's tasks: data the project makes itself, so no base model can know the answers.

``knowledge``: fictional facts (the demo federation's planets, dishes and islands, plus more
entities), spread over the clients with overlap: fact ``i`` is held by ``holders`` consecutive
clients, so with 3 clients and 2 holders each client holds two thirds of the facts and never sees
the rest. Training states each held fact in two phrasings; evaluation asks a third phrasing,
scope ``own`` for facts the client holds and ``other`` for facts it never saw, with the fact's
value as ``key`` (exact match: the answer contains it). Every fact is also a public prompt, in a
fourth phrasing: the only way a client can learn a fact it never saw is through the federation.

``instructions``: instruction following across topics. Each client holds one topic (recipes,
island travel plans, planet descriptions) whose replies follow a topic-specific structure.
Training covers some entities of the client's topic; evaluation asks about held-out entities of
its own topic (``own``) and of the other clients' topics (``other``), scored by ROUGE-L and
embedding similarity to the reference and by the reference's perplexity. The public prompts
ask about further entities of every topic.

``overlap``: the knowledge task's facts over at least 4 clients whose knowledge overlaps
unevenly, the regime federated co-training was designed for: each client's interest in the three
topics is drawn from a Dirichlet(α) distribution, and each fact of topic t is held by client c
with probability min(1, h·p_c[t]) (at least one holder, never all). Some facts are held by most
clients, some by one; a client knows much of one topic and little of another. Scopes and exact
match as in ``knowledge``.

Everything is deterministic: ``knowledge`` and ``instructions`` use no randomness at all, and
``overlap`` draws its split from a generator seeded by its arguments; the same sizes give the
same files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from privsem.data.demo import TOPICS, Fact

TASKS = ("knowledge", "instructions", "overlap")
# The clients of each task's federation (the bench's federations assign their models).
TASK_CLIENTS: dict[str, tuple[str, ...]] = {
    "knowledge": ("alice", "bob", "carol"), "instructions": ("alice", "bob", "carol"),
    "overlap": ("alice", "bob", "carol", "dave")}


@dataclass(frozen=True)
class TaskFiles:
    """Where a written task lives: the public prompts and each client's train and eval files."""

    task: str
    prompts: Path
    train: dict[str, Path]
    eval: dict[str, Path]
    description: str


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _check_clients(clients: Sequence[str], *, at_least: int = 2) -> None:
    if len(clients) < at_least or len(set(clients)) != len(clients):
        raise ValueError(f"clients={list(clients)!r}: give at least {at_least} distinct client "
                         "ids")


# ---------------------------------------------------------------------------------------------
# Task 1: knowledge transfer


def knowledge_facts(entities_per_topic: int) -> list[Fact]:
    """The facts, topics interleaved (planet, dish, island, planet, ...), so a round-robin
    assignment spreads every topic over every client."""
    per_topic = [fn(entities_per_topic) for fn in TOPICS.values()]
    return [fs[i] for i in range(len(per_topic[0])) for fs in per_topic]


def write_knowledge(folder: Path, clients: Sequence[str], *, entities_per_topic: int = 4,
                    holders: int = 2, eval_per_scope: int | None = None) -> TaskFiles:
    """Writes the knowledge-transfer task. Fact ``i`` is held by clients ``i, i+1, ...,
    i+holders-1`` (mod n). ``eval_per_scope`` caps the questions per scope (None: all)."""
    _check_clients(clients)
    n = len(clients)
    if not 1 <= holders < n:
        raise ValueError(f"holders={holders}: use 1 <= holders < {n} (the number of clients), "
                         "so every client has facts it never saw")
    if entities_per_topic < 1:
        raise ValueError(f"entities_per_topic={entities_per_topic}: use an integer >= 1")
    folder.mkdir(parents=True, exist_ok=True)
    facts = knowledge_facts(entities_per_topic)
    held = {c: [f for i, f in enumerate(facts) if (k - i) % n < holders]
            for k, c in enumerate(clients)}
    prompts: list[dict[str, object]] = [{"id": f"fact-{i}", "prompt": f.question[3]}
                                        for i, f in enumerate(facts)]
    train, evals = {}, {}
    for c in clients:
        rows: list[dict[str, object]] = []
        for f in held[c]:
            rows.append({"instruction": f.question[0], "output": f.answer})
            rows.append({"messages": [{"role": "user", "content": f.question[1]},
                                      {"role": "assistant", "content": f.answer}]})
        train[c] = _write(folder / f"{c}.train.jsonl", rows)
        mine = set(map(id, held[c]))
        own = [f for f in facts if id(f) in mine][:eval_per_scope]
        other = [f for f in facts if id(f) not in mine][:eval_per_scope]
        evals[c] = _write(folder / f"{c}.eval.jsonl", [
            {"instruction": f.question[2], "output": f.answer, "scope": scope, "key": f.key,
             "topic": f.topic} for scope, fs in (("own", own), ("other", other)) for f in fs])
    return TaskFiles("knowledge", _write(folder / "prompts.jsonl", prompts), train, evals,
                     f"{len(facts)} fictional facts, each held by {holders} of {n} clients "
                     f"({len(held[clients[0]])} per client, 2 phrasings each for training); "
                     f"every fact is a public prompt; exact match on a third phrasing")


def overlap_holders(clients: Sequence[str], topics: Sequence[str], facts_topic: Sequence[str], *,
                    alpha: float, spread: float, seed: int) -> dict[str, list[int]]:
    """Which facts each client holds: client c's topic mixture p_c ~ Dirichlet(α), fact i of
    topic t held with probability min(1, spread·p_c[t]); a fact nobody drew goes to the client
    most interested in its topic, and a fact everybody drew leaves the least interested one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(clients)
    mix = rng.dirichlet([alpha] * len(topics), size=n)  # (n, T)
    col = {t: k for k, t in enumerate(topics)}
    held: dict[str, list[int]] = {c: [] for c in clients}
    for i, t in enumerate(facts_topic):
        p = np.minimum(1.0, spread * mix[:, col[t]])  # (n,)
        holds = rng.uniform(size=n) < p
        if not holds.any():
            holds[int(np.argmax(mix[:, col[t]]))] = True
        if holds.all():
            holds[int(np.argmin(mix[:, col[t]]))] = False
        for k, c in enumerate(clients):
            if holds[k]:
                held[c].append(i)
    return held


def write_overlap(folder: Path, clients: Sequence[str], *, entities_per_topic: int = 4,
                  alpha: float = 0.5, spread: float = 1.5, seed: int = 0,
                  eval_per_scope: int | None = 8) -> TaskFiles:
    """Writes the overlap task (see the module docstring) for at least 4 clients."""
    _check_clients(clients, at_least=4)
    if entities_per_topic < 1:
        raise ValueError(f"entities_per_topic={entities_per_topic}: use an integer >= 1")
    if not (alpha > 0 and spread > 0):
        raise ValueError(f"alpha={alpha}, spread={spread}: use numbers > 0")
    folder.mkdir(parents=True, exist_ok=True)
    facts = knowledge_facts(entities_per_topic)
    topics = sorted({f.topic for f in facts})
    held = overlap_holders(clients, topics, [f.topic for f in facts], alpha=alpha,
                           spread=spread, seed=seed)
    prompts: list[dict[str, object]] = [{"id": f"fact-{i}", "prompt": f.question[3]}
                                        for i, f in enumerate(facts)]
    train, evals = {}, {}
    for c in clients:
        mine = set(held[c])
        rows: list[dict[str, object]] = []
        for i in held[c]:
            f = facts[i]
            rows.append({"instruction": f.question[0], "output": f.answer})
            rows.append({"messages": [{"role": "user", "content": f.question[1]},
                                      {"role": "assistant", "content": f.answer}]})
        train[c] = _write(folder / f"{c}.train.jsonl", rows)
        own = [f for i, f in enumerate(facts) if i in mine][:eval_per_scope]
        other = [f for i, f in enumerate(facts) if i not in mine][:eval_per_scope]
        evals[c] = _write(folder / f"{c}.eval.jsonl", [
            {"instruction": f.question[2], "output": f.answer, "scope": scope, "key": f.key,
             "topic": f.topic} for scope, fs in (("own", own), ("other", other)) for f in fs])
    counts = ", ".join(f"{c}: {len(held[c])}" for c in clients)
    per_fact = [sum(i in held[c] for c in clients) for i in range(len(facts))]
    return TaskFiles("overlap", _write(folder / "prompts.jsonl", prompts), train, evals,
                     f"{len(facts)} fictional facts over {len(clients)} clients with uneven, "
                     f"overlapping knowledge (Dirichlet α = {alpha}); facts held: {counts}; "
                     f"holders per fact {min(per_fact)}–{max(per_fact)}; exact match on a "
                     "third phrasing")


# ---------------------------------------------------------------------------------------------
# Task 2: instruction following across topics

_SYL = ["ar", "bel", "cor", "dam", "es", "fol", "gir", "hal", "ith", "jun", "kel", "lum",
        "mar", "nev", "osk", "pel", "quin", "ros", "sab", "tor"]


def _word(i: int, salt: int) -> str:
    n = len(_SYL)  # (a, b) is distinct for every i < n * n
    a = _SYL[(i + salt * 3) % n]
    b = _SYL[(i * 7 + i // n + salt) % n]
    c = _SYL[(i * 3 + salt * 11 + 5) % n]
    return (a + b + c).capitalize()


def _pick(options: Sequence[str], i: int, salt: int) -> str:
    return options[(i * (salt + 1) + salt) % len(options)]


Item = tuple[tuple[str, str, str], str]  # (three phrasings of the instruction, reference reply)


def _recipe(i: int) -> Item:
    d = _word(i, 1)
    ing = ["smoked barley", "river clams", "black lentils", "quince", "goat butter",
           "wild sorrel", "sea fennel", "millet", "dried plums"]
    verb = ["roast", "simmer", "fry", "steam", "braise"]
    a, b = _pick(ing, i, 1), _pick(ing, i, 4)
    if a == b:
        b = ing[(ing.index(a) + 1) % len(ing)]
    mins = 10 + 5 * (i % 7)
    serve = _pick(["warm with flatbread", "cold with yoghurt", "hot over rice",
                   "with a squeeze of lemon"], i, 2)
    return ((f"Write a short recipe for the dish {d}.", f"How do I cook {d}?",
             f"Give me the recipe of {d}."),
            (f"To cook {d}, take {a} and {b}. First {_pick(verb, i, 3)} the {a}, then add the "
            f"{b} and {_pick(verb, i, 5)} for {mins} minutes. Serve {serve}."))


def _travel(i: int) -> Item:
    isl, cap = _word(i, 2), _word(i, 3)
    sight = ["old lighthouse", "salt marsh", "cliff monastery", "lava caves", "pearl market",
             "cedar forest"]
    food = ["grilled octopus", "fig pastries", "clam soup", "barley bread", "honey cake"]
    export = ["salt", "pearls", "cedar wood", "wool", "sponges", "dried figs"]
    return ((f"Plan a day on the island {isl}.", f"What should I do during one day on {isl}?",
             f"Suggest a one-day itinerary for the island of {isl}."),
            (f"Start in {cap}, the capital of {isl}. In the morning visit the "
            f"{_pick(sight, i, 1)}; at noon eat {_pick(food, i, 2)} by the harbour; in the "
            f"evening watch the boats bring in {_pick(export, i, 3)}."))


def _planet(i: int) -> Item:
    p, s = _word(i, 4), _word(i, 5)
    colour = ["violet", "amber", "teal", "crimson", "silver", "olive", "indigo"]
    surface = ["glass dunes", "iron plains", "frozen lakes", "basalt towers", "moss valleys"]
    days = 40 + 17 * (i % 11)
    return ((f"Describe the planet {p}.", f"What is the planet {p} like?",
             f"Give a short description of the planet {p}."),
            (f"{p} orbits the star {s} once every {days} days. Its sky is "
            f"{_pick(colour, i, 1)} and its surface is covered in {_pick(surface, i, 2)}."))


INSTRUCTION_TOPICS: dict[str, Callable[[int], Item]] = {
    "recipes": _recipe, "travel": _travel, "planets": _planet}


def write_instructions(folder: Path, clients: Sequence[str], *, train_per_client: int = 16,
                       eval_per_scope: int = 8, public_per_topic: int = 8) -> TaskFiles:
    """Writes the instruction-following task: client ``k`` holds topic ``k mod 3``.
    Entities 0..train-1 of a topic train (two phrasings each), the next ``eval_per_scope`` are
    held out for evaluation, the next ``public_per_topic`` are public prompts."""
    _check_clients(clients)
    for name, v in (("train_per_client", train_per_client), ("eval_per_scope", eval_per_scope),
                    ("public_per_topic", public_per_topic)):
        if v < 1:
            raise ValueError(f"{name}={v}: use an integer >= 1")
    folder.mkdir(parents=True, exist_ok=True)
    topics = list(INSTRUCTION_TOPICS)
    topic_of = {c: topics[k % len(topics)] for k, c in enumerate(clients)}
    used = sorted(set(topic_of.values()), key=topics.index)
    ev0, pub0 = train_per_client, train_per_client + eval_per_scope
    prompts: list[dict[str, object]] = []
    for j in range(public_per_topic):  # interleaved, so max_prompts keeps every topic
        for t in used:
            phr, _ = INSTRUCTION_TOPICS[t](pub0 + j)
            prompts.append({"id": f"{t}-{j}", "prompt": phr[2]})
    train, evals = {}, {}
    for c in clients:
        gen = INSTRUCTION_TOPICS[topic_of[c]]
        rows: list[dict[str, object]] = []
        for i in range(train_per_client):
            phr, ref = gen(i)
            rows.append({"instruction": phr[0], "output": ref})
            rows.append({"messages": [{"role": "user", "content": phr[1]},
                                      {"role": "assistant", "content": ref}]})
        train[c] = _write(folder / f"{c}.train.jsonl", rows)
        others = [t for t in used if t != topic_of[c]]
        ev: list[dict[str, object]] = []
        for i in range(eval_per_scope):
            phr, ref = gen(ev0 + i)
            ev.append({"instruction": phr[2], "output": ref, "scope": "own",
                       "topic": topic_of[c]})
        for i in range(eval_per_scope):
            t = others[i % len(others)]
            phr, ref = INSTRUCTION_TOPICS[t](ev0 + i // len(others))
            ev.append({"instruction": phr[2], "output": ref, "scope": "other", "topic": t})
        evals[c] = _write(folder / f"{c}.eval.jsonl", ev)
    return TaskFiles("instructions", _write(folder / "prompts.jsonl", prompts), train, evals,
                     f"one topic per client ({', '.join(f'{c}: {t}' for c, t in topic_of.items())}"
                     f"), {2 * train_per_client} training examples each; held-out entities of "
                     "the client's own topic and of the others' topics")


def write_task(task: str, folder: Path, clients: Sequence[str], *, quick: bool,
               sizes: dict[str, int] | None = None) -> TaskFiles:
    """Writes ``task`` at the benchmark's size (``quick``: the CI size; ``sizes``: the task
    writer's own arguments, for the probe)."""
    if sizes is not None:
        writers = {"knowledge": write_knowledge, "instructions": write_instructions,
                   "overlap": write_overlap}
        if task not in writers:
            raise ValueError(f"task {task!r} is not known; use one of {', '.join(TASKS)}")
        return writers[task](folder, clients, **sizes)  # type: ignore[operator]
    if task == "knowledge":
        return write_knowledge(folder, clients, entities_per_topic=2 if quick else 4,
                               eval_per_scope=4 if quick else 8)
    if task == "instructions":
        return write_instructions(folder, clients, train_per_client=4 if quick else 16,
                                  eval_per_scope=4 if quick else 8,
                                  public_per_topic=2 if quick else 8)
    if task == "overlap":
        return write_overlap(folder, clients, entities_per_topic=2 if quick else 4,
                             eval_per_scope=4 if quick else 8)
    raise ValueError(f"task {task!r} is not known; use one of {', '.join(TASKS)}")
