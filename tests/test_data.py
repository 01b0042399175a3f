"""Data loaders: the instruction formats, errors naming file and line, the demo federation."""

import json

import pytest

from privsem.data import demo, load_eval, load_examples, load_prompts
from privsem.errors import DataError


def test_formats(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [
        {"instruction": "Add", "input": "1 and 2", "output": "3"},
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"prompt": "p", "response": "r"},
    ]) + "\n\n")
    ex = load_examples(p)
    assert ex[0].messages == (("user", "Add\n\n1 and 2"),) and ex[0].response == "3"
    assert ex[1].messages == (("system", "be brief"), ("user", "hi")) and ex[1].response == "yo"
    assert ex[2].response == "r"


@pytest.mark.parametrize("line,problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"instruction": "x"}', "'output'"),
    ('{"instruction": "", "output": "y"}', "'instruction'"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
     "assistant"),
    ('{"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}',
     "role"),
    ('{"text": "hello"}', "unknown format"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "ok", "output": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as ei:
        load_examples(p)
    assert ei.value.line == 2 and str(p) in str(ei.value) and problem in str(ei.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_examples(tmp_path / "e.jsonl")


def test_prompts_and_eval_validation(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(DataError, match="duplicate prompt id"):
        load_prompts(p)
    e = tmp_path / "e.jsonl"
    e.write_text('{"instruction": "q", "output": "a", "scope": "mine"}\n')
    with pytest.raises(DataError, match="scope"):
        load_eval(e)


def test_shipped_demo_files_are_the_generators_output():
    from pathlib import Path

    import privsem.data

    d = Path(privsem.data.__file__).parent / "demo"
    built = demo.build()
    assert sorted(p.name for p in d.glob("*.jsonl")) == sorted(built)
    for name, rows in built.items():
        assert (d / name).read_text(encoding="utf-8") == demo.render(rows), name


def test_demo_federation_shape():
    prompts = load_prompts("demo:prompts.jsonl")
    topics = {p.id.split("-")[0] for p in prompts}
    assert topics == {"planets", "dishes", "islands"}
    for client in demo.CLIENTS:
        items = load_eval(f"demo:{client}.eval.jsonl")
        own = {i.topic for i in items if i.scope == "own"}
        other = {i.topic for i in items if i.scope == "other"}
        assert len(own) == 1 and len(other) == 2 and not own & other
        train = load_examples(f"demo:{client}.train.jsonl")
        # held-out questions are phrased differently from every training question
        train_q = {ex.messages[-1][1] for ex in train}
        assert not {i.example.messages[-1][1] for i in items} & train_q
    subjects = [f.subject for fn in demo.CLIENTS.values() for f in fn(12)]
    assert len(set(subjects)) == len(subjects) // 2  # two facts per distinct subject
