"""The built-in conversation corpus and the rule that scores answers to its held-out questions."""

import inspect

import pytest

from data.chat_dataset import held_out
from data.conversations import check_row
from data.stdlib_chat import (
    MODULES,
    answer_is_right,
    held_out_signature_questions,
    parameter_names,
    public_functions,
    stdlib_conversations,
)


@pytest.fixture(scope="module")
def rows():
    return list(stdlib_conversations())


def test_corpus_is_valid_deterministic_and_covers_every_kind(rows):
    assert rows == list(stdlib_conversations())
    for i, row in enumerate(rows):
        check_row(row, f"#{i}")  # raises on a malformed row
    kinds = {row["kind"] for row in rows}
    assert kinds == {"signature", "purpose", "two-turn", "module", "listing"}
    assert len(rows) > 1000 and len({row["topic"] for row in rows}) > 50
    two_turn = next(r for r in rows if r["kind"] == "two-turn")
    assert [m["role"] for m in two_turn["messages"] if m["role"] != "system"] == ["user", "assistant"] * 2


@pytest.mark.parametrize("module_name", ["textwrap", "json", "shutil", "heapq"])
def test_signatures_read_from_source_have_the_real_parameters(module_name):
    import importlib

    module = importlib.import_module(module_name)
    found = public_functions(module_name)
    assert found
    for name, signature, purpose in found:
        obj = getattr(module, name.rsplit(".", 1)[1])
        if not inspect.isfunction(obj):  # replaced at import by a C accelerator (heapq's _heapq): the source wins
            continue
        assert parameter_names(signature, name) == list(inspect.signature(obj).parameters), name
        assert purpose and inspect.getdoc(obj).startswith(purpose.rstrip(".")[:20]), name
    assert ("textwrap.dedent", "textwrap.dedent(text)") in [(n, s) for n, s, _ in public_functions("textwrap")]


def test_held_out_questions_come_from_held_out_modules_only(rows):
    questions = held_out_signature_questions(0.1)
    held = {m for m in MODULES if held_out(m, 0.1)}
    assert questions and {name.rsplit(".", 1)[0] for _, name, _ in questions} <= held
    train_topics = {row["topic"] for row in rows if not held_out(row["topic"], 0.1)}
    assert not train_topics & held


@pytest.mark.parametrize(("text", "names"), [
    ("json.dumps(obj, *, skipkeys=False, separators=(',', ':'), **kw)", ["obj", "skipkeys", "separators", "kw"]),
    ("it is shutil.copyfile(src, dst, /, *, follow_symlinks=True) indeed", ["src", "dst", "follow_symlinks"]),
    ("heapq.merge(*iterables, key=None, reverse=False)", ["iterables", "key", "reverse"]),
    ("f(a: 'x, y' = \"(\", b=[1, (2, 3)])", ["a", "b"]),
    ("os.getcwd()", []),
])
def test_parameter_names(text, names):
    name = text.split("(")[0].split()[-1]
    assert parameter_names(text, name) == names


def test_the_rule_wants_exactly_the_real_names_in_order():
    sig = "shutil.copyfile(src, dst, *, follow_symlinks=True)"
    assert answer_is_right("shutil.copyfile(src, dst, *, follow_symlinks=False)", "shutil.copyfile", sig)
    assert not answer_is_right("shutil.copyfile(dst, src, *, follow_symlinks=True)", "shutil.copyfile", sig)
    assert not answer_is_right("shutil.copyfile(src, dst)", "shutil.copyfile", sig)
    assert not answer_is_right("shutil.copy(src, dst, *, follow_symlinks=True)", "shutil.copyfile", sig)
    assert not answer_is_right("shutil.copyfile(src, dst, *, follow_symlinks=True", "shutil.copyfile", sig)
