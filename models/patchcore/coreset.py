"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, Alg. 1).

Start from one point; repeatedly add the point farthest from everything chosen so far. Done
naively, every choice reads all N points (N = images x patches: 200 x 1024 here), tens of
thousands of passes over ~100 MB. This gives the same choices with far less work, using only
that a point's distance to the chosen set never grows:

- distances to newly chosen centres are folded in for all points only every BATCH choices, as
  one matrix product (fast) instead of BATCH matrix-vector products (memory-bound);
- in between, each point's last folded distance is an upper bound of its true one. Points are
  visited in decreasing order of that bound, their true distances computed, until the bound of
  the next point is below the best true distance found: no point further down can beat it, so
  the choice is exactly the greedy one.
"""
import numpy as np

from adkit.training import progress

BATCH = 64  # choices between full updates
VISIT = 256  # points whose true distance is computed at a time


def random_projection(features, dims, seed):
    """[N, D] -> [N, dims] by a seeded Gaussian matrix (distances kept up to a common factor,
    Johnson-Lindenstrauss); unchanged when D <= dims."""
    if features.shape[1] <= dims:
        return np.ascontiguousarray(features, dtype=np.float32)
    rng = np.random.default_rng([seed, 1])
    matrix = rng.standard_normal((features.shape[1], dims)).astype(np.float32) / np.sqrt(dims)
    return features.astype(np.float32, copy=False) @ matrix


class _Points:
    """Points (centred: smaller norms, less float32 cancellation) and their squared norms."""

    def __init__(self, points):
        self.x = np.ascontiguousarray(points - points.mean(axis=0), dtype=np.float32)
        self.squares = np.einsum("ij,ij->i", self.x, self.x)

    def squared_distances(self, rows, centers):
        """[len(rows), len(centers)] squared distances (``rows``: indices or a slice)."""
        x, squares = self.x[rows], self.squares[rows]
        c = self.x[centers]
        out = squares[:, None] - 2.0 * (x @ c.T) + self.squares[centers][None, :]
        return np.maximum(out, 0.0)


def greedy_coreset(points, count, seed, desc="coreset"):
    """Indices of ``count`` points of ``points`` [N, d] chosen greedily, in order of choice; the
    first is drawn from ``seed``. Ties go to the lowest index, as a plain argmax would; points
    closer than float32 resolves (near-duplicates, at the very end) may be ordered otherwise."""
    data = _Points(points)
    n = len(data.x)
    count = int(min(max(count, 1), n))
    chosen = [int(np.random.default_rng([seed, 2]).integers(n))]
    bound = data.squared_distances(slice(None), chosen)[:, 0]  # folded up to `folded` centres
    folded = 1
    order = np.argsort(-bound, kind="stable")  # ties: lower index first
    bar = progress(total=count - 1, desc=desc)
    while len(chosen) < count:
        if len(chosen) - folded >= BATCH:
            fresh = data.squared_distances(slice(None), chosen[folded:]).min(axis=1)
            np.minimum(bound, fresh, out=bound)
            folded = len(chosen)
            order = np.argsort(-bound, kind="stable")
        chosen.append(_farthest(data, bound, order, chosen[folded:]))
        bar.update(1)
    bar.close()
    return np.asarray(chosen, dtype=np.int64)


def _farthest(data, bound, order, pending):
    """The point farthest from the chosen set: ``bound`` holds squared distances to all but the
    ``pending`` centres (upper bounds of the true ones), ``order`` sorts it decreasing."""
    if not pending:
        return int(order[0])
    best_value, best_index = -1.0, -1
    for start in range(0, len(order), VISIT):
        rows = order[start:start + VISIT]
        if bound[rows[0]] < best_value:
            break  # nothing from here on can beat the best true distance
        true = np.minimum(bound[rows], data.squared_distances(rows, pending).min(axis=1))
        k = int(true.argmax())
        ties = rows[true == true[k]]
        if true[k] > best_value or (true[k] == best_value and ties.min() < best_index):
            best_value, best_index = float(true[k]), int(ties.min())
    return best_index
