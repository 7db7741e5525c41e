"""Evaluation: identifiability metrics (matching, DCS, code consistency, OMP oracle), downstream loss, probing,
interpretability."""
