"""Hand saescope's results to other tools: `neuronpedia.py` (Neuronpedia's export layout), `saelens.py` (a
pretrained_saes.yaml entry for SAELens' registry)."""
