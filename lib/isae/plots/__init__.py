"""Figures: one module per paper."""
