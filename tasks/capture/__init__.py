"""Stage 2, capture: a model replica per actor runs shards through the model with hooks at every chosen
(layer, site), keeps the shard's bottom-k sample of token states and feeds the streaming statistics."""
