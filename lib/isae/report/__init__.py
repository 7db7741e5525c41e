"""Reporting: the papers' numbers, side-by-side tables and the claim checks."""
