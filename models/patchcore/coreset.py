"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, Alg. 1).

Start from one point; repeatedly add the point farthest from everything chosen so far. Done
naively every step reads all N points (N = images x patches, 200 x 1024 here): tens of
thousands of passes over ~100 MB. This implementation gives the same choices (the greedy choice
is exact, only redundant distance computations are skipped) by remembering which chosen centre
each point is nearest to: a new centre c can only take over points of cluster j if
d(c, c_j) < 2 r_j, r_j being the farthest distance in cluster j (triangle inequality), so most
clusters are not looked at once there are many.
"""
import numpy as np

from adkit.training import progress

PROJECTION_SEED_OFFSET = 1  # the projection's RNG is (seed, 1); the start point's is (seed, 2)


def random_projection(features, dims, seed):
    """[N, D] -> [N, dims] by a seeded Gaussian matrix (distances kept up to a common factor,
    Johnson-Lindenstrauss); unchanged when D <= dims."""
    if features.shape[1] <= dims:
        return np.ascontiguousarray(features, dtype=np.float32)
    rng = np.random.default_rng([seed, PROJECTION_SEED_OFFSET])
    matrix = rng.standard_normal((features.shape[1], dims)).astype(np.float32) / np.sqrt(dims)
    return features.astype(np.float32, copy=False) @ matrix


RADIUS_REFRESH = 32  # recompute every cluster's radius this often (in between they only shrink)
FULL_PASS_FRACTION = 0.3  # above this share of points to look at, one pass over all is cheaper


def greedy_coreset(points, count, seed, desc="coreset"):
    """Indices of ``count`` points of ``points`` [N, d] chosen greedily, in order of choice; the
    first is drawn from ``seed``. Ties go to the lowest index, as a plain argmax would; distances
closer than float32 resolves (near-duplicate points, at the very end) may be ordered otherwise."""
    # centred: smaller norms, so less float32 cancellation in |p|^2 - 2 p.c + |c|^2
    points = np.ascontiguousarray(points - points.mean(axis=0), dtype=np.float32)
    n = len(points)
    count = int(min(max(count, 1), n))
    squares = np.einsum("ij,ij->i", points, points)
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = np.random.default_rng([seed, 2]).integers(n)
    centers = np.empty((count, points.shape[1]), dtype=np.float32)
    center_squares = np.empty(count, dtype=np.float32)
    nearest = _distances(points, squares, points[chosen[0]])  # to the nearest chosen centre
    owner = np.zeros(n, dtype=np.int32)                       # ... which centre that is
    radius = np.zeros(count, dtype=np.float32)                # farthest member per cluster
    radius[0] = nearest.max()
    # float32 rounding must never make a cluster look safe when it is not
    slack = 1e-3 * float(radius[0]) + 1e-12
    for i in progress(range(1, count), total=count - 1, desc=desc):
        new = int(nearest.argmax())
        chosen[i] = new
        centers[i - 1], center_squares[i - 1] = points[chosen[i - 1]], squares[chosen[i - 1]]
        center = points[new]
        to_centers = _distances(centers[:i], center_squares[:i], center)
        maybe = to_centers <= 2.0 * radius[:i] + slack
        look = np.flatnonzero(maybe[owner])
        if len(look) > FULL_PASS_FRACTION * n:
            look = slice(None)  # a plain matrix-vector product beats gathering
            new_dists = _distances(points, squares, center)
        else:
            new_dists = _distances(points[look], squares[look], center)
        closer = new_dists < nearest[look]
        taken = np.arange(n)[look][closer]
        nearest[taken] = new_dists[closer]
        owner[taken] = i
        radius[i] = nearest[new]  # 0: the centre itself; raised below
        np.maximum.at(radius, owner[taken], nearest[taken])
        if i % RADIUS_REFRESH == 0:
            radius[:] = 0.0
            np.maximum.at(radius, owner, nearest)
    return chosen


def _distances(points, squares, center):
    """Euclidean distances of ``points`` (with their squared norms) to ``center``."""
    squared = squares - 2.0 * (points @ center) + float(center @ center)
    return np.sqrt(np.maximum(squared, 0.0))
