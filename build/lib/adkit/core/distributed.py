"""Several processes, one per device (``python -m paddle.distributed.launch ... main.py``).

Without the launcher (or with one process) the world size is 1 and everything here is the
identity or a no-op: nothing is imported from ``paddle.distributed`` and nothing changes.

With the launcher (``PADDLE_TRAINERS_NUM`` > 1, read by ``init``):
- training of the batched methods is data-parallel: ``data_parallel(layer)`` wraps a net in
  ``paddle.DataParallel`` (gradients averaged over the processes) and each process takes its
  contiguous block of every global batch (``shard_rows``), so the batch of a step is still a
  function of (seed, step) and a resumed run sees the batches an uninterrupted one would;
- inference over a dataset is sharded: each process runs the model on its block of the images
  (``shard``) and ``gather`` brings the results to the main process once (rank 0, as
  MMDetection's multi-GPU test), which alone computes metrics and writes files; the others wait
  at ``barrier``. Every process must make the same sequence of collective calls (``gather``,
  ``barrier``, ``mean_and_any``, DataParallel's gradient all-reduce).
- ``main.py --mode infer`` is sharded too: process 0 makes the staging folder, whose path
  ``broadcast_object`` hands to the others; each writes its block's files there, and process 0
  writes the CSVs and swaps the folder in (adkit.deploy.predictor.predict_into_folder).
- ``local()``: a block in which this process works alone (world size 1 again), e.g. a category
  of a method that is not data-parallel, trained by one process of several.

Collectives: NCCL on GPU; Gloo on CPU (Paddle's CPU build runs two CPU processes with
``python -m paddle.distributed.launch --nproc_per_node 2``; ``--devices`` needs GPUs). Gloo
gives up on a collective after 30 s, so ``barrier`` polls the launcher's key-value store, and
``gather`` starts with one.
"""
import contextlib
import os

import numpy as np

from adkit.core.errors import UserError

_state = {"initialised": False, "local": 0, "barriers": 0}
BARRIER_POLL_SECONDS = 0.05
GATHER_CHUNK_BYTES = 64 * 2**20  # one collective moves at most this much per process


def launched_world_size():
    """Processes the launcher started (1 without one); readable before Paddle loads."""
    try:
        return max(int(os.environ.get("PADDLE_TRAINERS_NUM", "1")), 1)
    except ValueError:
        return 1


def init():
    """Once per process, at start: ``paddle.distributed.init_parallel_env()`` when launched with
    more than one process (after the device is set). Returns the world size."""
    if launched_world_size() > 1 and not _state["initialised"]:
        import paddle.distributed as dist

        dist.init_parallel_env()
        _state["initialised"] = True
    return world_size()


def world_size():
    if not _state["initialised"] or _state["local"]:
        return 1
    import paddle.distributed as dist

    return int(dist.get_world_size())


def rank():
    if not _state["initialised"] or _state["local"]:
        return 0
    import paddle.distributed as dist

    return int(dist.get_rank())


def is_main():
    """True in the process that writes files, logs and prints (rank 0; always with one)."""
    return rank() == 0


@contextlib.contextmanager
def local():
    """This process alone: world size 1, rank 0, no collectives, inside the block."""
    _state["local"] += 1
    try:
        yield
    finally:
        _state["local"] -= 1


def barrier():
    """Wait until every process got here. Polls the launcher's key-value store instead of
    ``paddle.distributed.barrier``: Gloo (CPU) gives up on a collective after 30 s, and the
    others may wait longer than that while the main process writes a category's outputs."""
    world = world_size()
    if world == 1:
        return
    import time

    from paddle.base import core

    store = core.create_or_get_global_tcp_store()
    _state["barriers"] += 1
    key = f"adkit/barrier/{_state['barriers']}"
    store.add(key, 1)
    while store.add(key, 0) < world:
        time.sleep(BARRIER_POLL_SECONDS)


def block(n, rank_, world):
    """(start, stop) of ``rank_``'s contiguous block of ``n`` items: the blocks are in rank
    order, cover 0..n-1 once, and differ in size by at most one (the first ``n % world``
    are one longer)."""
    base, extra = divmod(int(n), int(world))
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def shard(indices):
    """This process's contiguous block of ``indices`` (all of them with one process)."""
    indices = list(indices)
    start, stop = block(len(indices), rank(), world_size())
    return indices[start:stop]


def check_batch_size(batch_size):
    """A global batch must split evenly over the processes, or DataParallel's average would
    weight images unequally: one error line otherwise."""
    world = world_size()
    if world > 1 and int(batch_size) % world:
        raise UserError(f"--batch_size {batch_size}: data-parallel training splits each batch "
                        f"evenly over the {world} processes; use a multiple of {world}")


def shard_rows(batch):
    """This process's equal block of the rows of a global batch (see ``check_batch_size``)."""
    world = world_size()
    if world == 1:
        return batch
    check_batch_size(len(batch))
    per = len(batch) // world
    return batch[rank() * per:(rank() + 1) * per]


def data_parallel(layer):
    """``paddle.DataParallel(layer)`` with several processes (it broadcasts rank 0's weights
    and averages gradients in backward); the layer itself with one. Call the returned object
    for the forward passes that must synchronise; save and load the layer itself."""
    if world_size() == 1:
        return layer
    import paddle

    return paddle.DataParallel(layer)


def mean_and_any(values, flag):
    """({name: mean over the processes}, any process's ``flag``) in one all-reduce: a
    training step's losses (each process's are those of its block of the batch, so the mean
    is the global batch's loss) and whether to stop."""
    names = list(values)
    if world_size() == 1:
        return dict(values), bool(flag)
    import paddle
    import paddle.distributed as dist

    summed = paddle.to_tensor([float(values[k]) for k in names] + [1.0 if flag else 0.0],
                              dtype="float64")
    dist.all_reduce(summed)
    summed = summed.numpy()
    world = world_size()
    return {k: float(v) / world for k, v in zip(names, summed[:-1])}, bool(summed[-1] > 0)


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...] on every process (small objects)."""
    if world_size() == 1:
        return [obj]
    import paddle.distributed as dist

    out = []
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process (a small picklable object; the others pass anything,
    e.g. None). Starts with a ``barrier`` (Gloo's 30 s limit). One process: ``obj``."""
    if world_size() == 1:
        return obj
    import paddle.distributed as dist

    barrier()
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(arrays):
    """``arrays``: numpy arrays whose first axis holds this process's items (its ``shard``).
    On the main process: each array concatenated over the processes in rank order (so
    ``shard`` + ``gather`` restores the original order); on the others None. With one
    process: the arrays as given. Blocks may differ in length (or be empty: their trailing
    shape is then taken from the others)."""
    arrays = [np.asarray(a) for a in arrays]
    if world_size() == 1:
        return tuple(arrays)
    barrier()  # all here before the first collective (Gloo's 30 s limit)
    shapes = all_gather_object([(a.shape, a.dtype.str) for a in arrays])
    out = []
    for i, array in enumerate(arrays):
        rows = [shape[i][0][0] if len(shape[i][0]) else 0 for shape in shapes]
        filled = [shape[i] for shape in shapes if shape[i][0] and shape[i][0][0]]
        if not filled:  # nothing anywhere: this process's (empty) array stands for all
            out.append(array)
            continue
        trailing, dtype = tuple(filled[0][0][1:]), np.dtype(filled[0][1])
        local = array if len(array) else np.zeros((0,) + trailing, dtype)
        out.append(_gather_rows(np.ascontiguousarray(local, dtype=dtype), rows))
    return tuple(out) if is_main() else None


def _gather_rows(array, rows):
    """Rows of every process to rank 0, in chunks of at most GATHER_CHUNK_BYTES per process
    (each chunk padded to the same row count, as the collective needs)."""
    import paddle
    import paddle.distributed as dist

    row_bytes = max(int(np.prod(array.shape[1:], dtype=np.int64)) * array.itemsize, 1)
    chunk = max(GATHER_CHUNK_BYTES // row_bytes, 1)
    parts = [[] for _ in rows]
    for start in range(0, max(rows), chunk):
        piece = array[start:start + chunk]
        padded = np.zeros((chunk,) + array.shape[1:], array.dtype)
        padded[:len(piece)] = piece
        received = [] if is_main() else None
        dist.gather(paddle.to_tensor(padded), received, dst=0)
        if is_main():
            for r, tensor in enumerate(received):
                keep = max(min(rows[r] - start, chunk), 0)
                if keep:
                    parts[r].append(tensor.numpy()[:keep])
    if not is_main():
        return None
    pieces = [p for rank_parts in parts for p in rank_parts]
    return np.concatenate(pieces) if pieces else array[:0]
