"""RD4AD (Deng & Li, CVPR 2022): networks.py (OCBE, reverse decoder, loss, map, inference
network) and method.py (training recipe, checkpoint)."""
