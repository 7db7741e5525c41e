"""P2's toy model of superposition: the toy data (``isae.toy.data``) and the tied toy SAE (``isae.toy.model``)."""
