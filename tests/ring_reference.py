"""The reference for ring membership: a full stable argsort of each row (the production
selection never sorts a whole row)."""


def ring_by_argsort(similarity, start, stop):
    """Each row's columns of ranks [start, stop) (0 = most similar), as sorted lists."""
    order = similarity.argsort(dim=1, descending=True, stable=True)
    return [sorted(row) for row in order[:, start:stop].tolist()]
