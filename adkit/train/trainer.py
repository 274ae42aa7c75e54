"""The one training loop every method shares, and its one checkpoint format.

A method supplies its networks, optimizer (and scheduler), a ``train_step(batch, step_seed) ->
{loss name: float}`` and what else its checkpoint must hold (``extra``). The trainer owns the
rest: per-step seeding, progress with a running loss, log and save intervals, atomic
checkpoints, resume, and Ctrl-C / SIGTERM (the current step finishes, a checkpoint is written,
and ``TrainingInterrupted`` says where).

A step that ends with ``trainer.optimise(loss)`` (instead of clear_grad / backward / step) gets
mixed precision's loss scaling (``--amp fp16``, ``set_mixed_precision``); every step runs under
``paddle.amp.auto_cast`` when mixed precision is on (GPU only). With several processes
(adkit.core.distributed), a method wraps the nets it trains with ``trainer.data_parallel(net)`` and
calls those wrappers in its step: the trainer then hands each process its block of every batch,
only the main process writes checkpoints and curves (the others wait for it), and a Ctrl-C
seen by any process stops all of them after the same step.

Checkpoint (``checkpoint.pdparams``, numpy only, read without executing code):
    {"format": 1, "method": str, "step": steps done, "total": int,
     "nets": {role: state dict}, "optimizer": state under structured names,
     "scheduler": state or None, "losses": float32 [step] total loss per step, "extra": {...}}
    (+ "amp_scaler": the GradScaler's state, with --amp fp16)
"""
import contextlib
import itertools
import signal
import threading
from collections import deque

import numpy as np

from adkit.core import distributed
from adkit.core.errors import UserError
from adkit.core.image_io import size_text
from adkit.train.train_log import ScalarLog
from adkit.train.training import (load_train_state, optimizer_state, restore_optimizer, save_train_state,
                                  seed_step, set_state, state_to_numpy)
from adkit.core.progress import LONG_PHASE_SECONDS, RateProbe, duration_text, log, progress

CHECKPOINT_FILE = "checkpoint.pdparams"
FORMAT = 1
ESTIMATE_STEPS = 3  # steps timed (after the first, which builds kernels) for the time estimate
CURVE_POINTS = 100  # rows train_log.csv gets at least in a run of that many steps or more
AMP_MODES = {"fp16": "float16", "bf16": "bfloat16"}  # --amp -> paddle.amp.auto_cast dtype
_MIXED_PRECISION = {"amp": None}


def set_mixed_precision(amp):
    """--amp for the trainers made from now on: None (float32), 'fp16' (with loss scaling) or
    'bf16' (no scaling needed). main.py sets it once from the command line."""
    if amp is not None and amp not in AMP_MODES:
        raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    _MIXED_PRECISION["amp"] = amp


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during training, after the checkpoint of the last finished step."""

    def __init__(self, message, step):
        super().__init__(message)
        self.step = step


class Trainer:
    def __init__(self, name, path, nets, trained, optimizer, *, total, seed, log_interval,
                 save_interval, scheduler=None, extra=None, on_save=None, log_dir=None):
        """``path``: the checkpoint file; ``nets``: {role: Layer} saved and restored;
        ``trained``: the roles the optimizer updates; ``on_save(step)``: files a method
        writes beside each checkpoint (EfficientAD's role files, the distilled teacher);
        ``log_dir``: where the loss curves go (default: the checkpoint's folder)."""
        self.name, self.path = name, path
        self.nets, self.trained = nets, {role: nets[role] for role in trained}
        self.optimizer, self.scheduler = optimizer, scheduler
        self.total, self.seed = int(total), int(seed)
        self.log_interval, self.save_interval = int(log_interval), int(save_interval)
        self.extra = extra or {}
        self.on_save = on_save
        self.log_dir = log_dir or str(path.parent)
        self.step = 0
        self.losses = []
        self._stop = None  # the signal that asked to stop, once one came
        self.amp = _MIXED_PRECISION["amp"]
        self.scaler = None
        if self.amp == "fp16":
            import paddle

            self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0**15)
        self._optimised = False  # the step called optimise() (needed for fp16 loss scaling)
        self._parallel = False  # a net was wrapped for data-parallel training

    # -- what a step calls -----------------------------------------------------------------

    def data_parallel(self, net):
        """``net`` wrapped in paddle.DataParallel with several processes (itself with one);
        call the result in the step so that gradients are averaged. From then on each process
        gets its block of every batch (``distributed.shard_rows``)."""
        wrapped = distributed.data_parallel(net)
        self._parallel = self._parallel or wrapped is not net
        return wrapped

    def optimise(self, loss):
        """clear_grad, backward, optimizer step; with --amp fp16 the loss is scaled and a step
        whose gradients overflowed is skipped (GradScaler)."""
        self._optimised = True
        self.optimizer.clear_grad()
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        import paddle

        return paddle.amp.auto_cast(enable=True, dtype=AMP_MODES[self.amp], level="O1")

    # -- checkpoints ---------------------------------------------------------------------

    def save(self):
        """The checkpoint (and ``on_save``'s files), by the main process; the others wait."""
        if distributed.is_main():
            state = {
                "format": FORMAT, "method": self.name, "step": self.step, "total": self.total,
                "nets": {role: state_to_numpy(net.state_dict()) for role, net in self.nets.items()},
                "optimizer": optimizer_state(self.optimizer, self.trained),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "losses": np.asarray(self.losses, np.float32), "extra": self.extra}
            if self.scaler is not None:
                state["amp_scaler"] = state_to_numpy(self.scaler.state_dict())
            save_train_state(self.path, state)
            if self.on_save:
                self.on_save(self.step)
        distributed.barrier()

    def resume(self):
        """Restore nets, optimizer, scheduler, step and loss history; returns ``extra``."""
        state = read_checkpoint(self.path, "--resume", f"no {self.name} training to continue "
                                                       "there; train without --resume")
        if state["method"] != self.name:
            raise UserError(f"--resume: {self.path} is a {state['method']} checkpoint, not {self.name}")
        for role, net in self.nets.items():
            set_state(net, state["nets"][role])
        restore_optimizer(self.optimizer, state["optimizer"], self.trained)
        if self.scheduler is not None:
            self.scheduler.set_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("amp_scaler"):
            self.scaler.load_state_dict(state["amp_scaler"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]
        if self.step > self.total:
            raise UserError(f"--resume: {self.path} is already at step {self.step}, past the "
                            f"{self.total} steps asked for")
        log.info("%s: resuming at step %d of %d", self.name, self.step, self.total)
        return state["extra"]

    # -- the loop ------------------------------------------------------------------------

    def run(self, batches, train_step):
        """``batches(start)`` yields (step, batch) from step ``start``; ``train_step(batch,
        step_seed)`` does one optimisation step. Ends with a checkpoint at ``total``.
        Data-parallel (``data_parallel``): ``batches`` yields the global batch (the same in
        every process) and ``train_step`` gets this process's block of it."""
        window = deque(self.losses[-self.log_interval:], maxlen=self.log_interval)
        bar = progress(total=self.total, initial=self.step, desc=f"training {self.name}", unit="steps")
        curves = None
        # train_log.csv: a row every --log_interval steps, but at least ~CURVE_POINTS rows in a
        # run, so that a short run still draws a curve (the log lines keep --log_interval)
        curve_every = max(1, min(self.log_interval, -(-self.total // CURVE_POINTS)))
        several = distributed.world_size() > 1
        shard = self._parallel and several
        rate = RateProbe(skip=1, measure=ESTIMATE_STEPS)
        with self._deferred_stop(), contextlib.ExitStack() as closing:
            for step, batch in itertools.islice(batches(self.step), max(self.total - self.step, 0)):
                if shard and batch is not None:
                    batch = distributed.shard_rows(batch)
                with self._autocast():
                    losses = train_step(batch, seed_step(self.seed, step))
                if self.scaler is not None and not self._optimised:
                    raise UserError(f"--amp fp16: the {self.name} training step does not use the "
                                    "trainer's loss scaling (Trainer.optimise); use --amp bf16")
                stop = None
                if several:  # one collective: losses averaged over the processes, any Ctrl-C
                    losses, stop = distributed.mean_and_any(losses, self._stop is not None)
                total_loss = losses.get("total", next(iter(losses.values())))
                self.losses.append(total_loss)
                window.append(total_loss)
                self.step = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(window):.4f}", refresh=False)
                self._log_estimate(rate.update(1))
                stopping = (self._stop is not None) if stop is None else stop  # all stop together
                ends = stopping or self.step == self.total  # the last step is always recorded
                if distributed.is_main() and (self.step % curve_every == 0 or ends):
                    scalars = {"loss": float(np.mean(window)), "lr": self.optimizer.get_lr(),
                               **{k: v for k, v in losses.items() if k != "total"}}
                    if curves is None:  # columns: the losses this method reports
                        curves = ScalarLog(self.log_dir, list(scalars))
                        closing.callback(curves.close)
                    curves.add(self.step, scalars)
                if distributed.is_main() and (self.step % self.log_interval == 0 or ends):
                    log.info("%s step %d/%d loss %.5f (mean of the last %d) %s", self.name,
                             self.step, self.total, np.mean(window), len(window),
                             " ".join(f"{k} {v:.5f}" for k, v in losses.items() if k != "total"))
                if stopping:
                    bar.close()
                    self.save()
                    raise TrainingInterrupted(
                        f"interrupted at step {self.step} of {self.total}: checkpoint saved to "
                        f"{self.path}", self.step)
                if self.step % self.save_interval == 0 and self.step < self.total:
                    self.save()
        bar.close()
        self.save()

    def _log_estimate(self, seconds_per_step):
        """Once, after the first steps: how long the rest of a long training will take."""
        if seconds_per_step is None or not distributed.is_main():
            return
        left = seconds_per_step * (self.total - self.step)
        if left >= LONG_PHASE_SECONDS:
            log.info("%s: about %s for the %d steps left (%.2f s per step)", self.name,
                     duration_text(left), self.total - self.step, seconds_per_step)

    def _deferred_stop(self):
        """Ctrl-C / SIGTERM: finish the step, then save and stop; a second one stops at once."""
        trainer = self

        class Deferred:
            def __enter__(self):
                self.previous = {}
                if threading.current_thread() is not threading.main_thread():
                    return self
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.previous[sig] = signal.signal(sig, self.handle)
                return self

            def handle(self, signum, frame):
                if trainer._stop is not None:
                    if distributed.world_size() > 1:
                        # paddle.distributed.launch turns one Ctrl-C into up to three SIGTERMs
                        # 0.2 s apart; a second Ctrl-C makes it kill the processes (10 s)
                        return
                    raise KeyboardInterrupt
                trainer._stop = signum
                log.warning("stopping after this step to save a checkpoint (again to stop now)")

            def __exit__(self, *exc):
                for sig, handler in self.previous.items():
                    signal.signal(sig, handler)
                return False

        return Deferred()


def read_checkpoint(path, what, advice):
    """A checkpoint written by ``Trainer.save`` (one line naming the file if there is none)."""
    if not path.is_file():
        raise UserError(f"{what}: {path} not found ({advice})")
    state = load_train_state(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint of this version (format {FORMAT})")
    return state


def check_resumable(path, method, options):
    """Before anything is built: UserError unless ``path`` holds a checkpoint of ``method``
    trained with the same ``options`` {name: value} (those stored in its extras). Sizes compare
    as text: 64 and [64, 64] are one size (checkpoints stored a side before non-square sizes)."""
    saved = read_checkpoint(path, "--resume", f"no {method} training to continue there")["extra"]
    for key, now in options.items():
        before = saved[key]
        if key == "image_size":
            before, now = size_text(before), size_text(now)
        if before != now:
            raise UserError(f"{path}: trained with --{key} {before}, cannot resume with --{key} {now}")
