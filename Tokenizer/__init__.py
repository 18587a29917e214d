"""Tokenizers: our byte-fallback SentencePiece BPE (load, train, export to Hugging Face) and, for imported
models, a Hugging Face tokenizer.json; `load_tokenizer(dir)` picks by the files present."""

from Tokenizer.base import TextTokenizer, has_tokenizer, load_tokenizer
from Tokenizer.tokenizer import Tokenizer
from Tokenizer.train_tokenizer import train_tokenizer

__all__ = ["TextTokenizer", "Tokenizer", "has_tokenizer", "load_tokenizer", "train_tokenizer"]
