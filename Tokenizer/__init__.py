"""Byte-fallback SentencePiece BPE tokenizer: load, train, export to Hugging Face."""

from Tokenizer.tokenizer import Tokenizer
from Tokenizer.train_tokenizer import train_tokenizer

__all__ = ["Tokenizer", "train_tokenizer"]
