"""Experiments: the profile tables and one driver module per notebook."""
