"""A generated novel: one long plain-text document of paragraphs, like a Project Gutenberg book or input.txt."""

from __future__ import annotations

import random

_NAMES = ["Anna", "Boris", "Clara", "Dmitri", "Elena", "Fyodor"]
_PROSE = ("the of and to in was that he she it with his her as had for at on but not be they said all by one "
          "house road winter letter morning evening garden river night window door train town field")
_WORDS = _PROSE.split(" ")


def make_novel(n_chars: int = 1_000_000, seed: int = 0) -> str:
    """About n_chars characters: chapters, prose paragraphs and dialogue separated by blank lines, verse with
    single line breaks, a little non-ASCII text. Deterministic for a seed."""
    rng = random.Random(seed)
    parts, size, chapter = [], 0, 0
    while size < n_chars:
        r = rng.random()
        if r < 0.03:
            chapter += 1
            block = f"CHAPTER {chapter}"
        elif r < 0.2:
            block = f"{rng.choice(_NAMES).upper()}:\n" + "\n".join(
                " ".join(rng.choices(_WORDS, k=rng.randint(4, 9))).capitalize() + "," for _ in range(rng.randint(2, 5)))
        else:
            sentences = (" ".join(rng.choices(_WORDS + _NAMES, k=rng.randint(5, 18))).capitalize()
                         + rng.choice([".", ".", "!", "?", " — naïve café."]) for _ in range(rng.randint(1, 8)))
            block = " ".join(sentences)
        parts.append(block)
        size += len(block) + 2
    return "\n\n".join(parts) + "\n"
