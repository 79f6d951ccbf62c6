"""The model checkpoint, shared by every stage: name resolution, config, tokenizer and weights loading
(`loading`), and placement over several GPUs (`split`)."""
