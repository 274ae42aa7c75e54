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
  the choice is exactly the greedy one. Only the CANDIDATES largest bounds are sorted after a
  fold (a partition, not a sort of all N); the rest is sorted only if a choice gets that far.

Distances are one matrix product of augmented rows, [x, |x|^2, 1] . [-2c, 1, |c|^2] = |x - c|^2,
taken BLOCK rows at a time so that the product, its minimum and the fold stay in cache.
"""
import numpy as np

from adkit.core.progress import progress

BATCH = 64  # choices between full updates
VISIT = 256  # points whose true distance is computed at a time
CANDIDATES = 8192  # largest bounds kept sorted after a fold
BLOCK = 8192  # rows per block of a full update


def random_projection(features, dims, seed):
    """[N, D] -> [N, dims] by a seeded Gaussian matrix (distances kept up to a common factor,
    Johnson-Lindenstrauss); unchanged when D <= dims."""
    if features.shape[1] <= dims:
        return np.ascontiguousarray(features, dtype=np.float32)
    rng = np.random.default_rng([seed, 1])
    matrix = rng.standard_normal((features.shape[1], dims)).astype(np.float32) / np.sqrt(dims)
    return features.astype(np.float32, copy=False) @ matrix


class _Points:
    """Points (centred: smaller norms, less float32 cancellation), augmented for distances."""

    def __init__(self, points):
        x = np.asarray(points, dtype=np.float32)
        x = x - x.mean(axis=0)
        n, d = x.shape
        self.rows = np.empty((n, d + 2), np.float32)  # [x, |x|^2, 1]
        self.rows[:, :d] = x
        self.rows[:, d] = np.einsum("ij,ij->i", x, x)
        self.rows[:, d + 1] = 1.0
        self.d = d

    def __len__(self):
        return len(self.rows)

    def _centres(self, centers):
        """[len(centers), d + 2]: the rows [-2c, 1, |c|^2] of the centres."""
        c = self.rows[centers]
        out = np.empty_like(c)
        out[:, :self.d] = -2.0 * c[:, :self.d]
        out[:, self.d] = 1.0
        out[:, self.d + 1] = c[:, self.d]
        return out

    # Products are [centres, points], so the minimum over centres runs along whole rows of
    # points (vectorised), not along each point's short row of centres (several times slower).
    def nearest_squared(self, rows, centers):
        """[len(rows)] squared distance of each of ``rows`` (indices) to its nearest centre."""
        return np.maximum((self._centres(centers) @ self.rows[rows].T).min(axis=0), 0.0)

    def fold(self, bound, centers):
        """bound = min(bound, squared distance to the nearest of ``centers``), block by block."""
        centres = self._centres(centers)
        for start in range(0, len(self.rows), BLOCK):
            block = centres @ self.rows[start:start + BLOCK].T
            np.minimum(bound[start:start + BLOCK], np.maximum(block.min(axis=0), 0.0),
                       out=bound[start:start + BLOCK])


def _descending(bound, count=None):
    """Indices of the ``count`` largest bounds (all when None) in decreasing order, ties by
    lower index first."""
    if count is None or count >= len(bound):
        return np.argsort(-bound, kind="stable")
    top = np.argpartition(-bound, count - 1)[:count]
    # the count-th value may tie with points left out: take every point at that value
    edge = bound[top].min()
    top = np.flatnonzero(bound >= edge)
    return top[np.argsort(-bound[top], kind="stable")]


def greedy_coreset(points, count, seed, desc="choosing the memory bank"):
    """Indices of ``count`` points of ``points`` [N, d] chosen greedily, in order of choice; the
    first is drawn from ``seed``. Ties go to the lowest index, as a plain argmax would; points
    closer than float32 resolves (near-duplicates, at the very end) may be ordered otherwise."""
    data = _Points(points)
    n = len(data)
    count = int(min(max(count, 1), n))
    chosen = [int(np.random.default_rng([seed, 2]).integers(n))]
    bound = np.full(n, np.inf, np.float32)
    data.fold(bound, chosen)  # folded up to `folded` centres
    folded = 1
    order = _descending(bound, CANDIDATES)
    bar = progress(total=count - 1, desc=desc, unit="patches")
    while len(chosen) < count:
        if len(chosen) - folded >= BATCH:
            data.fold(bound, chosen[folded:])
            folded = len(chosen)
            order = _descending(bound, CANDIDATES)
        choice = _farthest(data, bound, order, chosen[folded:])
        if choice is None:  # the sorted candidates ran out before the choice was certain
            order = _descending(bound)
            choice = _farthest(data, bound, order, chosen[folded:])
        chosen.append(choice)
        bar.update(1)
    bar.close()
    return np.asarray(chosen, dtype=np.int64)


def _farthest(data, bound, order, pending):
    """The point farthest from the chosen set: ``bound`` holds squared distances to all but the
    ``pending`` centres (upper bounds of the true ones), ``order`` sorts (the top of) it
    decreasing. None when ``order`` ends before the next bound falls below the best found and
    it is not all of the points."""
    if not pending:
        return int(order[0])
    best_value, best_index = -1.0, -1
    for start in range(0, len(order), VISIT):
        rows = order[start:start + VISIT]
        if bound[rows[0]] < best_value:
            return best_index  # nothing from here on can beat the best true distance
        true = np.minimum(bound[rows], data.nearest_squared(rows, pending))
        k = int(true.argmax())
        ties = rows[true == true[k]]
        if true[k] > best_value or (true[k] == best_value and ties.min() < best_index):
            best_value, best_index = float(true[k]), int(ties.min())
    if len(order) < len(bound):
        # points outside ``order`` have bounds <= its last: certain only if that is below the best
        if bound[order[-1]] < best_value:
            return best_index
        return None
    return best_index
