"""Frozen-encoder evaluation: weighted kNN (``knn``) and the linear probe (``linear_probe``)."""
