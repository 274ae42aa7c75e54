"""Micro-batching: requests that arrive together are run as one engine batch.

The first waiting image opens a batch; more join until ``max_batch`` are in or ``max_wait``
seconds have passed, and while a batch runs the next one fills up on its own. The queue is
bounded: a full queue refuses at once (the service answers 503), so nothing waits forever
and nothing is dropped unanswered."""
import asyncio

import numpy as np


class QueueFull(Exception):
    """More images are waiting than ``max_queue``."""


class BatcherClosed(Exception):
    """The batcher stopped taking work (its model was swapped out): submit to the new one."""


_STOP = object()


class MicroBatcher:
    def __init__(self, run, max_batch, max_wait, max_queue, on_batch=None):
        """``run(batch [N,3,S,S]) -> concurrent.futures.Future of (maps [N,S,S], scores [N])``;
        ``on_batch(size)`` is told the size of every batch run. Call ``start`` inside the
        event loop."""
        self._run = run
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self._queue = asyncio.Queue(int(max_queue))
        self._on_batch = on_batch or (lambda size: None)
        self._task = None
        self.closed = False

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def depth(self):
        return self._queue.qsize()

    async def submit(self, image):
        """One preprocessed image [3,S,S] -> (model-size map [S,S], score, batch size)."""
        if self.closed:
            raise BatcherClosed()
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((image, future))
        except asyncio.QueueFull:
            raise QueueFull() from None
        return await future

    async def close(self):
        """Take no more work, run what is queued, then stop."""
        if not self.closed:
            self.closed = True
            await self._queue.put(_STOP)
        if self._task is not None:
            await self._task

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if item is _STOP:
                return
            batch, stop = [item], False
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            await self._run_batch(batch)
            if stop:
                return

    async def _run_batch(self, batch):
        waiting = [(image, future) for image, future in batch if not future.done()]  # gone: skip
        if not waiting:
            return
        self._on_batch(len(waiting))
        try:
            maps, scores = await asyncio.wrap_future(self._run(np.stack([i for i, _ in waiting])))
        except Exception as err:  # every request of the batch gets the error
            for _, future in waiting:
                if not future.done():
                    future.set_exception(err)
            return
        for k, (_, future) in enumerate(waiting):
            if not future.done():
                future.set_result((maps[k], float(scores[k]), len(waiting)))
