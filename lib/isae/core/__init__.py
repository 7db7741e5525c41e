"""The SAE family and what it is built from: configs, the models, sparse kernels, aRIP terms, the naive
dense reference, seeds, provenance and SAELens-layout files. Depends on nothing else in isae."""
