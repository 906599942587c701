"""Collation: TDB NeuronRecords for MLP neurons, attention heads (token pairs) and SAE latents, in one pass."""
