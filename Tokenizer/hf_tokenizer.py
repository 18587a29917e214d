"""A Hugging Face `tokenizer.json` (byte-level BPE like Llama 3 and SmolLM2, SentencePiece-style like TinyLlama),
run with the `tokenizers` library: the tokenizer of an imported model, giving the ids transformers' AutoTokenizer
gives.

    tok = HFTokenizer.load("checkpoints/llama/tokenizer")   # or Tokenizer.load_tokenizer(dir), which picks
    tok.encode(text, bos=tok.add_bos)                         # == AutoTokenizer.from_pretrained(dir)(text).input_ids

Special tokens come from tokenizer_config.json (then special_tokens_map.json, as transformers 4.x wrote them).
The model's chat template (chat_template.jinja, as transformers saves it, else tokenizer_config.json's
chat_template) is what Tokenizer/chat.py renders conversations with, its special tokens as the markers.
Whether the model expects BOS first (`add_bos`) is tokenizer_config.json's `add_bos_token` when it says so, else
what the tokenizer.json post-processor adds: encode() itself adds BOS/EOS only when asked, so that data
preparation and generation decide explicitly. A special token written inside the text is matched as that token,
as transformers does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from core.errors import DataError
from Tokenizer.base import CHAT_TEMPLATE_FILE, HF_FILE, ChatFormat

CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")  # later files win, as in transformers
# The named special tokens transformers hands a chat template as variables (its special_tokens_map).
TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object")
    return data


def _config_template(value: object, path: Path) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named templates (the "default" one)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise DataError(f"{path}: chat_template must be a string or a list holding a 'default' template")


def _token_name(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """Encode text to token ids and back with a Hugging Face tokenizer.json; build one with HFTokenizer.load(dir)."""

    def __init__(self, directory: Path, tokenizer, settings: dict, content_hash: str, chat_template: str | None = None):
        self._directory = directory
        self._tok = tokenizer
        self._content_hash = content_hash
        self._chat_template = chat_template
        self._plain = None  # a copy that spells special tokens as text (encode_text), made when first needed
        self._template_tokens = {k: n for k in TEMPLATE_TOKENS if (n := _token_name(settings.get(k))) is not None}
        ids = {}
        for kind in ("bos", "eos", "pad", "unk"):
            name = _token_name(settings.get(f"{kind}_token"))
            if name is not None and tokenizer.token_to_id(name) is None:
                raise DataError(f"{directory}: {kind}_token {name!r} is not in {HF_FILE}")
            ids[kind] = None if name is None else tokenizer.token_to_id(name)
        if ids["eos"] is None:
            raise DataError(f"{directory}: the tokenizer names no eos_token (needed to end every document)")
        self._bos, self._eos = ids["bos"], ids["eos"]
        self._pad = ids["pad"] if ids["pad"] is not None else ids["eos"]  # padding is masked: any id does
        add_bos = settings.get("add_bos_token")
        self._add_bos = add_bos if isinstance(add_bos, bool) else self._post_processor_adds_bos()

    @classmethod
    def load(cls, directory: str | Path) -> HFTokenizer:
        """Load DIR/tokenizer.json (+ tokenizer_config.json); DataError naming the path when unusable."""
        from tokenizers import Tokenizer as RustTokenizer

        directory = Path(directory)
        path = directory / HF_FILE
        if not path.is_file():
            raise DataError(f"no tokenizer in {directory}: {path} does not exist")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read tokenizer {path}: {e}") from None
        try:
            tokenizer = RustTokenizer.from_str(raw.decode("utf-8", errors="replace"))
        except Exception as e:  # tokenizers raises a plain Exception for any file it cannot parse
            raise DataError(f"cannot read tokenizer {path}: {e}") from None
        settings: dict = {}
        digest = hashlib.sha256(raw)
        for name in CONFIG_FILES:
            if (directory / name).is_file():
                settings.update(_read_json(directory / name))
                digest.update(name.encode() + b"\0" + (directory / name).read_bytes())
        # transformers prefers chat_template.jinja, where it saves a template, over tokenizer_config.json's.
        template_path = directory / CHAT_TEMPLATE_FILE
        if template_path.is_file():
            raw_template = template_path.read_bytes()
            digest.update(CHAT_TEMPLATE_FILE.encode() + b"\0" + raw_template)
            template = raw_template.decode("utf-8", errors="replace")
        else:
            template = _config_template(settings.get("chat_template"), directory / "tokenizer_config.json")
        return cls(directory, tokenizer, settings, digest.hexdigest(), template)

    def _post_processor_adds_bos(self) -> bool:
        """Whether tokenizer.json's post-processor puts BOS first (Llama 3's TemplateProcessing does)."""
        if self._bos is None:
            return False
        with_specials = self._tok.encode("a", add_special_tokens=True).ids
        plain = self._tok.encode("a", add_special_tokens=False).ids
        return with_specials[:1] == [self._bos] and plain[:1] != [self._bos]

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos and self._bos is None:
            raise DataError(f"the tokenizer in {self._directory} has no bos_token")
        return ([self._bos] if bos else []) + ids + ([self._eos] if eos else [])

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally with BOS first and EOS last."""
        return self._wrap(self._tok.encode(text, add_special_tokens=False).ids, bos, eos)

    def encode_text(self, text: str) -> list[int]:
        """Ids of `text` with the strings of special tokens in it spelled as text, never as those tokens (as
        transformers' split_special_tokens=True does): chat message contents cannot forge markers."""
        if self._plain is None:
            from tokenizers import Tokenizer as RustTokenizer

            plain = RustTokenizer.from_str(self._tok.to_str())  # a copy: the shared one keeps matching them
            plain.encode_special_tokens = True
            self._plain = plain
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], bos: bool = False, eos: bool = False,
                     num_threads: int = -1) -> list[list[int]]:
        """encode() for many texts (`tokenizers` parallelizes by itself; num_threads is accepted, not used)."""
        return [self._wrap(e.ids, bos, eos) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (lists, numpy arrays, 1-D tensors); special tokens decode to nothing."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self._tok.decode(ids, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """Id of a piece (added tokens included); None when it is not in the vocabulary."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Piece of an id; None when out of range."""
        return self._tok.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id; None when the tokenizer has none (GPT-2 style tokenizers may not)."""
        return self._bos

    @property
    def eos_id(self) -> int:
        """End-of-sequence id, appended to every training document."""
        return self._eos

    @property
    def pad_id(self) -> int:
        """Padding id: pad_token's, else eos_id."""
        return self._pad

    @property
    def has_chat_tokens(self) -> bool:
        """True when the model ships a chat template: conversations are rendered with it (Tokenizer/chat.py)."""
        return self._chat_template is not None

    @property
    def chat_token_ids(self) -> dict[str, int]:
        """Id of every chat marker of the model's format (see chat_format); a DataError when it has no template."""
        return dict(self.chat_format().markers)

    def chat_format(self) -> ChatFormat:
        """The model's own chat format: its template; as markers, the added tokens that transformers treats as
        control tokens (the special ones, and others the template writes, like Qwen's <think>); as reply ends,
        the special ones (they decode to nothing, so no reply holds them; Llama 3's <|eot_id|> is one)."""
        template = self._chat_template
        if template is None:
            raise DataError(f"tokenizer {self._directory} has no chat template ({CHAT_TEMPLATE_FILE} or "
                            "tokenizer_config.json's chat_template): this model was not made to chat")
        added = self._tok.get_added_tokens_decoder()  # {id: AddedToken}
        markers = {t.content: i for i, t in added.items()
                   if t.special or (t.content in template and not t.content.isspace())}
        stop_ids = frozenset(i for i, t in added.items() if t.special)
        return ChatFormat(template, markers, stop_ids, dict(self._template_tokens), strict=False)

    @property
    def add_bos(self) -> bool:
        """Whether the model expects BOS at the start of every sequence."""
        return self._add_bos

    @property
    def directory(self) -> Path:
        """The directory the tokenizer was loaded from."""
        return self._directory

    @property
    def content_hash(self) -> str:
        """sha256 over tokenizer.json and the config files that name its special tokens."""
        return self._content_hash

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self._directory)!r}, vocab_size={self.vocab_size}, hash={self._content_hash[:12]})"
