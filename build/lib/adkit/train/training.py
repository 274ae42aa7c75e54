"""Training plumbing shared by every method: optimiser, data stream, per-step seeding, state files."""
import random

import numpy as np


def make_adam(parameters, learning_rate, weight_decay=0.0, beta1=0.9, beta2=0.999):
    """Adam with coupled L2 weight decay (as torch.optim.Adam).

    use_multi_tensor=True: with the default per-parameter kernels, Paddle 3.3.1 on CPU made every
    later conv/matmul 5-6x slower after the first step (see benchmark/bench_adam.py).
    """
    import paddle

    return paddle.optimizer.Adam(
        learning_rate=learning_rate,
        beta1=beta1,
        beta2=beta2,
        parameters=list(parameters),
        weight_decay=weight_decay or None,
        use_multi_tensor=True,
    )


def batch_stream(dataset, batch_size, seed, start_step=0):
    """Yield ``(step, batch)`` forever; the batch at a step depends only on (seed, step).

    Each epoch is a permutation drawn from its own seeded generator, so a resumed run can jump
    straight to ``start_step`` and see exactly the batches an uninterrupted run would.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("batch_stream needs a non-empty dataset")
    batches_per_epoch = max(n // batch_size, 1)
    step = start_step
    while True:
        epoch, index_in_epoch = divmod(step, batches_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        if n < batch_size:  # tiny dataset: repeat it to fill one batch
            order = np.resize(order, batch_size)
        for b in range(index_in_epoch, batches_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield step, np.stack([dataset[int(i)] for i in idx])
            step += 1


def seed_step(seed, step):
    """Re-seed every RNG from (seed, step): dropout and augmentation replay exactly on resume."""
    import paddle

    step_seed = int(np.random.SeedSequence([seed, step]).generate_state(1)[0] % (2**31 - 1))
    random.seed(step_seed)
    np.random.seed(step_seed)
    paddle.seed(step_seed)
    return step_seed


def save_train_state(path, state):
    from adkit.train.weights import save_atomic

    save_atomic(state, path)


def load_train_state(path):
    from adkit.train.weights import safe_load

    return safe_load(path)


def set_state(target, numpy_state):
    """Load a (nested) numpy state dict into a paddle Layer or Optimizer."""
    import paddle

    def to_tensors(value):
        if isinstance(value, np.ndarray):
            return paddle.to_tensor(value)
        if isinstance(value, dict):
            return {k: to_tensors(v) for k, v in value.items()}
        return value

    target.set_state_dict(to_tensors(numpy_state))


def state_to_numpy(state):
    """A paddle state dict (possibly nested) as numpy arrays, for safe, portable saving."""
    import paddle

    if isinstance(state, paddle.Tensor):
        return state.numpy()
    if isinstance(state, dict):
        return {k: state_to_numpy(v) for k, v in state.items()}
    return state


def _rename_accumulators(optimizer_state, names):
    """Rename entries '<param name>_<accumulator>' by ``names`` {old: new}; others unchanged."""
    renamed = {}
    for key, value in optimizer_state.items():
        owner = max((name for name in names if key.startswith(name + "_")), key=len, default=None)
        renamed[key if owner is None else names[owner] + key[len(owner):]] = value
    return renamed


def _generated_to_structured(named_layers):
    return {param.name: f"{prefix}.{name}" for prefix, layer in named_layers.items()
            for name, param in layer.named_parameters()}


def optimizer_state(optimizer, named_layers):
    """The optimizer's state as numpy, keyed by structured names ('student.conv1.weight_moment1_0').

    Paddle keys Adam's moments by generated parameter names ('conv2d_57.w_0') that depend on how
    many layers the process built before, so a resumed run would silently drop them otherwise.
    ``named_layers``: {prefix: layer} for every layer the optimizer updates.
    """
    return _rename_accumulators(state_to_numpy(optimizer.state_dict()),
                                _generated_to_structured(named_layers))


def restore_optimizer(optimizer, saved_state, named_layers):
    """Inverse of ``optimizer_state`` for the layers of this process."""
    structured = {v: k for k, v in _generated_to_structured(named_layers).items()}
    set_state(optimizer, _rename_accumulators(saved_state, structured))


def total_steps(cfg, n_train, paper_hint):
    """--steps, else --epochs passes of ``batch_stream`` (whose last partial batch is dropped)."""
    from adkit.core.errors import UserError

    if cfg.get("steps"):
        return int(cfg["steps"])
    if cfg.get("epochs"):
        return int(cfg["epochs"]) * max(n_train // int(cfg["batch_size"]), 1)
    raise UserError(f"{cfg['model']} needs --steps or --epochs ({paper_hint})")
