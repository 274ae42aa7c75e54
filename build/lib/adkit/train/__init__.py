"""Fitting a method: the one training loop and its checkpoint format (trainer), optimiser,
batch stream and state helpers (training), training curves (train_log), safe weight loading
(weights) and the checkpoints of one-pass methods (fitted). Imports adkit.core."""
