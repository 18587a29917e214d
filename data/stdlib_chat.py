"""A built-in conversation corpus made from what every Python installation has: questions about standard-library
modules and functions, answered from their real signatures and docstrings.

Each module is one topic, so the validation split holds out whole modules (data/chat_dataset.py): a model that
answers a held-out question has learned the answer format from other modules and the facts from pretraining on
the standard library's source (builtin:python-stdlib), where `def name(params):` and the docstring sit side by
side. Kinds of conversation, for every public function with a docstring and a readable signature:

    signature   "What is the signature of textwrap.dedent?"  -> "textwrap.dedent(text)"
    purpose     "What does textwrap.dedent do?"              -> the docstring's first sentence
    two turns   purpose, then "What parameters does it take?" -> the signature
and per module a question about what it is for (its docstring's first sentence) and which functions it has.
Wording varies by a hash of the function's name, so the corpus is the same on every run of one Python version.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from data.chat_dataset import held_out

# Pure-Python standard-library modules (read as source, never imported).
MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "code", "codecs", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email.utils", "enum",
    "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "http.cookies", "imaplib", "inspect", "ipaddress", "json", "keyword",
    "linecache", "locale", "logging", "lzma", "mailbox", "mimetypes", "netrc", "ntpath", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib",
    "posixpath", "pprint", "pstats", "py_compile", "queue", "quopri", "random", "re", "reprlib", "rlcompleter",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "ssl",
    "stat", "statistics", "string", "struct", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "trace", "traceback", "tracemalloc",
    "types", "typing", "urllib.parse", "urllib.request", "uu", "uuid", "warnings", "wave", "weakref", "webbrowser",
    "xml.dom.minidom", "zipapp", "zipfile", "zipimport",
)
SYSTEM = "You answer questions about the Python standard library briefly and exactly."
MAX_SIGNATURE = 160  # characters: longer signatures are rare and would dominate a tiny model's context
MAX_ANSWER = 300  # characters of docstring used in an answer

SIGNATURE_QUESTIONS = (
    "What is the signature of {name}?",
    "What parameters does {name} take?",
    "How do I call {name}?",
    "Show the signature of {name}.",
)
PURPOSE_QUESTIONS = ("What does {name} do?", "What is {name} for?", "Explain {name} briefly.")
FOLLOW_UPS = ("What parameters does it take?", "And its signature?", "How do I call it?")


def _pick(options: tuple[str, ...], key: str, salt: str = "") -> str:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return options[digest[0] % len(options)]


def first_sentence(doc: str) -> str:
    """The docstring's first paragraph, joined into one line, cut after its first sentence (or MAX_ANSWER)."""
    paragraph = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    text = match.group(1) if match else paragraph
    return text if len(text) <= MAX_ANSWER else text[: MAX_ANSWER - 3].rstrip() + "..."


def module_source(module_name: str) -> Path | None:
    """The .py file of a standard-library module (a package's __init__.py); None if this Python has none."""
    root = Path(sysconfig.get_paths()["stdlib"]) / module_name.replace(".", "/")
    for path in (root.with_suffix(".py"), root / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def _parse(module_name: str) -> ast.Module | None:
    path = module_source(module_name)
    return None if path is None else ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def public_functions(module_name: str) -> list[tuple[str, str, str]]:
    """(qualified name, signature text, first docstring sentence) of the public functions defined at the top of
    the module's source, read with `ast` rather than imported: the same on every run of one Python version,
    whatever else the process imported or patched, and exactly the `def` lines that pretraining saw."""
    tree = _parse(module_name)
    if tree is None:
        return []
    defs = {}  # a name defined twice at the top level is the later definition, as at run time
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            defs[node.name] = node
    found = []
    for name, node in sorted(defs.items()):
        doc = ast.get_docstring(node)
        signature = f"{module_name}.{name}({ast.unparse(node.args)})"
        if doc and len(signature) <= MAX_SIGNATURE:
            found.append((f"{module_name}.{name}", signature, first_sentence(doc)))
    return found


def _module_purpose(module_name: str) -> str | None:
    tree = _parse(module_name)
    doc = None if tree is None else ast.get_docstring(tree)
    return first_sentence(doc) if doc else None


def signature_question(name: str) -> str:
    """The question about a function's signature as the corpus asks it (also used to measure answers)."""
    return _pick(SIGNATURE_QUESTIONS, name).format(name=name)


def stdlib_conversations() -> Iterator[dict]:
    """Rows {"messages": [...], "topic": module name, "kind": ...} in a fixed order."""
    for module_name in MODULES:
        functions = public_functions(module_name)
        if not functions:
            continue
        for name, signature, purpose in functions:
            system = [{"role": "system", "content": SYSTEM}] if _pick(("", "s"), name, "system") else []
            yield {"topic": module_name, "kind": "signature", "messages": [
                *system,
                {"role": "user", "content": signature_question(name)},
                {"role": "assistant", "content": signature},
            ]}
            yield {"topic": module_name, "kind": "purpose", "messages": [
                {"role": "user", "content": _pick(PURPOSE_QUESTIONS, name).format(name=name)},
                {"role": "assistant", "content": purpose},
            ]}
            if _pick(("", "", "t"), name, "two-turn"):
                yield {"topic": module_name, "kind": "two-turn", "messages": [
                    *system,
                    {"role": "user", "content": _pick(PURPOSE_QUESTIONS, name, "again").format(name=name)},
                    {"role": "assistant", "content": purpose},
                    {"role": "user", "content": _pick(FOLLOW_UPS, name)},
                    {"role": "assistant", "content": signature},
                ]}
        purpose = _module_purpose(module_name)
        if purpose:
            yield {"topic": module_name, "kind": "module", "messages": [
                {"role": "user", "content": f"What is the {module_name} module for?"},
                {"role": "assistant", "content": purpose},
            ]}
        names = ", ".join(name.rsplit(".", 1)[1] for name, _, _ in functions[:8])
        yield {"topic": module_name, "kind": "listing", "messages": [
            {"role": "user", "content": f"Name some functions of {module_name}."},
            {"role": "assistant", "content": f"{module_name} has {names}."},
        ]}


# ---- measuring answers ------------------------------------------------------------------------------------------


def parameter_names(text: str, name: str) -> list[str] | None:
    """The parameter names of the first call signature `name(...)` in `text`, in order (the `/` and `*` markers
    left out, `*args` and `**kwargs` kept as args and kwargs); None when `text` holds no complete `name(...)`.

    Splitting respects brackets and quotes, so defaults like `separators=(',', ':')` stay one parameter."""
    start = text.find(name + "(")
    if start < 0:
        return None
    i, depth, quote, current, params = start + len(name) + 1, 0, None, [], []
    while i < len(text):
        c = text[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                params.append("".join(current))
                break
            depth -= 1
        elif c == "," and depth == 0:
            params.append("".join(current))
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    else:
        return None  # the signature never closes
    names = []
    for param in params:
        head = re.split(r"[=:]", param, maxsplit=1)[0].strip().lstrip("*").strip()
        if head and head not in ("/",):
            names.append(head)
    return names


def answer_is_right(reply: str, name: str, signature: str) -> bool:
    """The rule for a held-out "signature of NAME?" question: the reply states `NAME(...)` with exactly the real
    parameter names, in order. Names are the checkable core of a signature (defaults may be written many ways),
    and they are facts the model can only have from pretraining on the module's source: the fine-tuning data
    never mentions a held-out module."""
    expected = parameter_names(signature, name)
    return expected is not None and parameter_names(reply, name) == expected


def held_out_signature_questions(val_fraction: float, split: str = "val") -> list[tuple[str, str, str]]:
    """(question, qualified name, real signature) for every function of the modules the chat dataset holds out
    with this val_fraction (data/chat_dataset.py's rule); split "train": of the modules it fine-tunes on."""
    return [(signature_question(name), name, signature)
            for module in MODULES if held_out(module, val_fraction) == (split == "val")
            for name, signature, _ in public_functions(module)]
