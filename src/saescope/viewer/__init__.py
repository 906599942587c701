"""Neuron viewer: FastAPI app + static page over collated records."""
