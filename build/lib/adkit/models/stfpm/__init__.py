"""STFPM (Wang et al., BMVC 2021): networks.py (student, loss, map, inference network) and
method.py (training recipe, checkpoint)."""
