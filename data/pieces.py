"""Cut documents too large to split by document (a novel, nanoGPT's input.txt) into pieces for the train/val split.

The split is decided per document (data/encode.py), so a corpus that is one big file would land whole in one
split. A document longer than MAX_DOCUMENT_CHARS is therefore cut into pieces of about PIECE_CHARS characters, and
each piece is split, tokenized and terminated with EOS like a document of its own. Why these sizes:

- 65,536 characters keeps ordinary documents whole (a source file, an article, a web page: the whole Python
  standard library except 32 of its 659 documents), so their split stays per document.
- 8,192 characters (about 2K tokens, more than a typical training window) makes a 1 MB novel about 128 pieces, so
  a 5% validation split is about 6 whole pieces; a 0.5% split (about 0.6 pieces on average) is topped up by
  data/splits.py with the corpus's last pieces, to about 16K tokens.

Cuts fall on the first paragraph break (a blank line) at least PIECE_CHARS into the piece; when there is none
within 2 x PIECE_CHARS, on the first line break, then the first space, else at 2 x PIECE_CHARS. A cut that would
leave fewer than PIECE_CHARS characters is not made (the rest stays with the last piece, which can then reach
about 3 x PIECE_CHARS). The pieces depend on the text only (not on the source order or the worker count), and
concatenated they give back the document exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAX_DOCUMENT_CHARS = 1 << 16  # longer documents are cut
PIECE_CHARS = 1 << 13  # minimum piece length; pieces are mostly under 2 x PIECE_CHARS characters
PIECE_RULE = (f"a document longer than {MAX_DOCUMENT_CHARS} characters is cut after the first blank line at least "
              f"{PIECE_CHARS} characters into each piece (else line break, else space, else hard at "
              f"{2 * PIECE_CHARS}); no cut leaves fewer than {PIECE_CHARS} characters after it")


@dataclass
class PieceStats:
    """Counters filled while documents are cut."""

    documents_cut: int = 0  # documents longer than the limit
    pieces: int = 0  # pieces those documents were cut into

    def as_manifest(self) -> dict:
        """The manifest's `pieces` entry: the rule, its sizes and these counts."""
        return {"rule": PIECE_RULE, "max_document_chars": MAX_DOCUMENT_CHARS, "piece_chars": PIECE_CHARS,
                "documents_cut": self.documents_cut, "pieces": self.pieces}


def _cut_position(text: str, lo: int, hi: int) -> int:
    """Where a piece that must reach `lo` ends: after a blank line, else a line break, else a space in [lo, hi)."""
    i = text.find("\n\n", lo - 1, hi + 1)
    if i >= 0:
        end = i + 2
        while end < len(text) and text[end] == "\n":  # a run of blank lines stays with the piece it ends
            end += 1
        return end
    for sep in ("\n", " "):
        i = text.find(sep, lo, hi)
        if i >= 0:
            return i + 1
    return hi


def cut_document(text: str, max_chars: int = MAX_DOCUMENT_CHARS, piece_chars: int = PIECE_CHARS) -> list[str]:
    """The document itself when it has at most max_chars characters, else its pieces (see the module docstring)."""
    if len(text) <= max_chars:
        return [text]
    pieces = []
    start = 0
    while len(text) - start > 2 * piece_chars:
        end = _cut_position(text, start + piece_chars, start + 2 * piece_chars)
        if len(text) - end < piece_chars:  # no short tail piece: the rest stays with this one
            break
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def cut_documents(texts: Iterable[str], stats: PieceStats | None = None) -> Iterator[str]:
    """Each document, or its pieces when it is too large to split by document, in order."""
    stats = stats if stats is not None else PieceStats()
    for text in texts:
        pieces = cut_document(text)
        if len(pieces) > 1:
            stats.documents_cut += 1
            stats.pieces += len(pieces)
        yield from pieces
