"""Export the tokenizer as a Hugging Face fast tokenizer that gives the same ids as Tokenizer.encode().

    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(out_dir)
    hf(text)["input_ids"] == Tokenizer.load(tokenizer_dir).encode(text)      # no BOS, no EOS: like our training
    hf.decode(ids, skip_special_tokens=True) == Tokenizer.decode(ids)

The `tokenizers` pipeline is built here directly: transformers' own conversion of this model (LlamaTokenizer)
gives other ids, because it puts a space in front of every text and reads a literal U+2581 as a space. In the
exported vocabulary the SentencePiece space marker U+2581 is written as a real space, so no normalizer is needed
and a literal U+2581 in the text, which is not in that vocabulary, falls back to its three byte tokens exactly as
Tokenizer.encode() does. Merges are derived from the piece scores (SentencePiece BPE keeps no merge list).

Special tokens are never matched inside text (split_special_tokens=True): the string "</s>" in a document is
text, as it is for SentencePiece. The post-processor adds nothing; append `eos_token_id` yourself where a
document ends, as the training data does.

A tokenizer with chat markers also gets the chat template (saved as chat_template.jinja), so that
`apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` gives the ids of Tokenizer/chat.py.
transformers finds the markers in the rendered text by matching them as added tokens; split_special_tokens
would split special tokens there, so the markers are added as non-special tokens, which it always matches.
Two consequences differ from our tokenizer, where text never becomes a marker: a plain `hf(text)` turns the
string "<|user|>" inside a text into the marker, and so does apply_chat_template for a message that contains
it unless called with `sanitize_control_tokens=True` (the markers are listed in `chat_control_tokens`);
`decode(..., skip_special_tokens=True)` keeps the markers' text, where our decode() drops it.
"""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from Tokenizer.chat import chat_template
from Tokenizer.tokenizer import (
    BOS_ID,
    CHAT_TOKENS,
    EOS_ID,
    MODEL_FILE,
    PAD_ID,
    SPACE_MARKER,
    UNK_ID,
    Tokenizer,
    pieces_never_cross_word_starts,
)


def _vocab_and_merges(sp: spm.SentencePieceProcessor) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """HF BPE vocab and merges from a SentencePiece BPE model."""
    vocab: dict[str, int] = {}
    ordinary: list[str] = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i)):
            piece = piece.replace(SPACE_MARKER, " ")
            ordinary.append(piece)
        vocab[piece] = i
    # SentencePiece BPE merges the adjacent pair whose concatenation has the highest score; in HF BPE the merge
    # rank plays that role, so every split of a piece into two pieces becomes a merge ranked by the piece score.
    mergeable = set(ordinary)
    ranked = []
    for piece in ordinary:
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in mergeable and right in mergeable:
                ranked.append((-sp.get_score(vocab[piece]), vocab[piece], vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    return vocab, merges


def export_hf_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path) -> None:
    """Write tokenizer.json and tokenizer_config.json into out_dir for transformers.AutoTokenizer.from_pretrained."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.load(tokenizer_dir)  # validates the special ids and byte pieces
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer.directory / MODEL_FILE))
    vocab, merges = _vocab_and_merges(sp)
    unk, bos, eos, pad = (sp.id_to_piece(i) for i in (UNK_ID, BOS_ID, EOS_ID, PAD_ID))

    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    # Cutting the text before each word (a run of spaces after a non-space) changes no ids when no piece crosses
    # a word start, which our trainer guarantees; it lets HF cache words.
    if pieces_never_cross_word_starts(sp):
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(" +[^ ]*|[^ ]+"), behavior="isolated")
    hf.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")  # no BOS/EOS added
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    chat = {}
    if tokenizer.has_chat_tokens:  # the markers keep their ids: they are already in the vocabulary
        hf.add_tokens([AddedToken(marker, special=False, normalized=False) for marker in CHAT_TOKENS])
        chat = {"chat_template": chat_template(tokenizer), "chat_control_tokens": list(CHAT_TOKENS)}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(
        tokenizer_object=hf,
        unk_token=unk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        split_special_tokens=True,  # "</s>" inside a text is text, as in SentencePiece
        clean_up_tokenization_spaces=False,  # decode must not touch spaces
        **chat,
    ).save_pretrained(str(out_dir))
