"""Data: P1's synthetic dictionaries and streams, the offline assets, text, the language and vision models,
activation caches."""
