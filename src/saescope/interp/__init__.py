"""Automated interpretability: explain → simulate → score with offline baselines, hf and OpenAI-compatible backends."""
