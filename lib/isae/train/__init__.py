"""Training: the one trainer (many models × seeds from one stream), checkpoints and resume."""
