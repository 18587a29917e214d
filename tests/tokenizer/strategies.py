"""Hypothesis strategies for text that tends to break tokenizers."""

from hypothesis import strategies as st

# Whitespace runs, control characters, SentencePiece's own space marker, byte-token and special-token look-alikes,
# combining marks, zero-width and BOM characters, emoji sequences, CJK, digits.
TRICKY = [
    " ", "  ", "    ", "\n", "\n\n", "\t", "\r", "\r\n", "\x00", "\x1b", "\x7f", "\u2581", "\u2581\u2581", " \u2581",
    "<s>", "</s>", "<unk>", "<pad>", "<0x41>", "\ufeff", "\u200b", "\u00a0", "e\u0301", "é", "😀", "👩‍💻", "🇫🇷",
    "数据", "模型", "Ωμέγα", "12", "3.14", "0", "the", " the", "def f(x):", "\U0010ffff", "\ufffd",
]

tricky_text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=4)), max_size=24).map("".join)
any_text = st.one_of(st.text(), tricky_text)
