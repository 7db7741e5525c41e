"""isae: sparse autoencoders, their identifiability metrics and the experiments of P1–P3.

The subpackages follow the pipeline: ``core`` (the SAE family) → ``data`` → ``train`` → ``eval`` →
``experiments`` (one driver per notebook) → ``report`` and ``plots``. Importing ``isae`` loads none of them.
"""
