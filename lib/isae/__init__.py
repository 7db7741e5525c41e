"""isae: sparse autoencoders, their identifiability metrics and the experiments of P1–P3."""

from .models import ARCHITECTURES, SAE, SAEConfig

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig"]
