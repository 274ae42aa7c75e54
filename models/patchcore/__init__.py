"""PatchCore (Roth et al., CVPR 2022): networks.py (patch embedding, nearest-neighbour scoring,
inference network), coreset.py (greedy k-center selection) and method.py (fitting the memory
bank, checkpoint)."""
