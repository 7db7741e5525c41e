"""P2's toy model of superposition (the tied toy SAE)."""
