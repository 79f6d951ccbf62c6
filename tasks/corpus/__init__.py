"""Stage 1, corpus: read documents, tokenize them, and cut the token ids into shards of model inputs."""
