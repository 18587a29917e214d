"""Data preparation: read document sources, tokenize them in parallel, write token shards and a manifest."""
