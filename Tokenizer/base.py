"""What data/, inference/ and train/ need from a tokenizer, and `load_tokenizer`, which picks the implementation.

Two implementations: the project's own SentencePiece model (tokenizer.py, DIR/tokenizer.model) and a Hugging Face
`tokenizer.json` (hf_tokenizer.py), which is how an imported model (scripts/convert_hf.py import) keeps its own
tokenizer. A directory with a tokenizer.json is read as Hugging Face's, since that file defines the exact pipeline
transformers runs; otherwise tokenizer.model is ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.errors import DataError

SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
# The chat template beside the tokenizer: ours (see Tokenizer/chat.py), and where transformers saves a model's.
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass(frozen=True)
class ChatFormat:
    """What Tokenizer/chat.py needs to render a conversation into ids: a Hugging Face style Jinja template, the
    marker strings its output holds (each becomes its one id), the ids that end a reply besides EOS, and the
    special token strings the template may use (bos_token, eos_token, ...)."""

    template: str
    markers: dict[str, int]
    stop_ids: frozenset[int]
    variables: dict[str, str]
    # True: the template must write each message's content once, unchanged (ours; an error otherwise). False
    # (an imported model's template, which may trim contents): such a template is rendered as transformers does.
    strict: bool


@runtime_checkable
class TextTokenizer(Protocol):
    """Text <-> token ids. `bos`/`eos` add those ids explicitly; `add_bos` says whether the model expects BOS
    first in every sequence (Llama's tokenizers: yes; ours and GPT-2 style ones: no)."""

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def encode_batch(self, texts: list[str], bos: bool = False, eos: bool = False,
                     num_threads: int = -1) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...

    def id_to_token(self, token_id: int) -> str | None: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def add_bos(self) -> bool: ...

    @property
    def directory(self) -> Path: ...

    @property
    def content_hash(self) -> str: ...


def has_tokenizer(directory: str | Path) -> bool:
    """True when `directory` holds a tokenizer of either kind."""
    directory = Path(directory)
    return (directory / HF_FILE).is_file() or (directory / SENTENCEPIECE_FILE).is_file()


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """The tokenizer in `directory`: Hugging Face's when it has a tokenizer.json, else ours (tokenizer.model);
    DataError naming the directory when it has neither."""
    directory = Path(directory)
    if (directory / HF_FILE).is_file():
        from Tokenizer.hf_tokenizer import HFTokenizer  # lazy: the `tokenizers` library is needed only here

        return HFTokenizer.load(directory)
    if (directory / SENTENCEPIECE_FILE).is_file():
        from Tokenizer.tokenizer import Tokenizer

        return Tokenizer.load(directory)
    hint = "; pass the directory that holds it" if directory.is_file() else ""
    raise DataError(f"no tokenizer in {directory}: it has neither {SENTENCEPIECE_FILE} nor {HF_FILE}{hint}")
