"""PaDiM (Defard et al., ICPR 2021): networks.py (embedding, Mahalanobis map, inference
network), gaussian.py (fitting the per-position Gaussians in bounded memory) and method.py."""
