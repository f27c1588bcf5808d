"""Storage: the models and, per aggregate, the one module that queries it."""
