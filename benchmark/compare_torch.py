"""``bench_train.py --compare_torch``: the Paddle training steps of EfficientAD-S and RD4AD timed
against the same networks in torch eager (torch_reference.py), alternating in one process.

Paddle runs the methods' own step code (``EfficientADMethod._train_step``; RD4AD's step as in
``RD4ADMethod.fit``). The torch nets get copies of the Paddle weights, so the first-step losses
must agree to float32 rounding (printed); the AE's dropout is off for those two checking steps
and on for the timed ones. The ImageNet penalty image is left out of both.

The baseline is checked, not trusted: torch is imported before Paddle and before the variables
this project sets for Paddle's libraries (bench_train.py does that), and each model's torch step
is also timed in a fresh process with no Paddle at all (``--torch_alone``). Both times are
printed; an in-process torch more than 15% slower than torch alone is flagged, since then the
ratio would flatter Paddle.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

from machine import cpu_model

EFFICIENTAD_BATCH, RD4AD_BATCH = 1, 16


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _data(root, image_size):
    from adkit.datasets import ImageDataset, MVTecCategory

    category = MVTecCategory(os.path.join(root, "sample_data"), "gravel")
    return ImageDataset(category.train_paths(), image_size)


def _batches(dataset, batch_size, count, seed=0):
    from adkit.train.training import batch_stream

    stream = batch_stream(dataset, batch_size, seed)
    return [next(stream)[1] for _ in range(count)]


def _efficientad(args, dataset, torch):
    from adkit.options.config import resolve_config
    from adkit.options.registry import build_method
    from adkit.train.onednn_layers import onednn_convolutions
    from adkit.models.efficientad.augment import random_color_jitter
    from adkit.models.efficientad.losses import teacher_channel_stats

    cfg = resolve_config(["--model", "efficientad_s", "--mode", "train", "--steps", "100",
                          "--image_size", str(args.image_size), "--teacher_weights", "none",
                          "--device", "cpu", "--cpu_conv", args.cpu_conv])
    method = build_method(cfg)
    batches = _batches(dataset, EFFICIENTAD_BATCH, args.steps + 2)
    method._teacher_graph = method.frozen_forward(method.teacher)  # as fit() does
    mean, std = teacher_channel_stats(method._teacher_graph, batches[:2])
    method.normalization = {"teacher_mean": mean, "teacher_std": std}
    optimizer, _ = method._make_optimizer(100)
    method.student.train()
    method.autoencoder.train()
    onednn = method.trains_with_onednn()

    def paddle_step(images, seed):
        np.random.seed(seed)
        with onednn_convolutions(method.student, method.autoencoder, on=onednn):  # as in fit()
            return method._train_step(images, None, optimizer)["total"]

    if torch is None:
        return paddle_step, None, batches, None
    from torch_reference import EfficientADStep

    reference = EfficientADStep(method, lr=float(cfg["lr"]), weight_decay=method.settings.weight_decay)

    def torch_step(images, seed):
        np.random.seed(seed)
        ae_images = np.stack([random_color_jitter(image) for image in images])
        return reference(images, ae_images)

    def dropout(on):
        method.autoencoder.dropout.train(on)
        reference.set_dropout(on)

    return paddle_step, torch_step, batches, dropout


def _rd4ad(args, dataset, torch):
    import paddle

    from adkit.options.config import resolve_config
    from adkit.options.registry import build_method
    from adkit.train.training import make_adam
    from adkit.models.rd4ad.networks import rd4ad_loss

    cfg = resolve_config(["--model", "rd4ad", "--mode", "train", "--steps", "100",
                          "--image_size", str(args.image_size), "--backbone", args.rd4ad_backbone,
                          "--backbone_weights", "none", "--device", "cpu", "--cpu_conv", args.cpu_conv])
    method = build_method(cfg)
    settings = method.settings
    method._build(settings.backbone, "none", cfg["image_size"])
    data_format = "NHWC" if method.trains_with_onednn() else "NCHW"  # as RD4ADMethod.fit
    nets = method._training_twins(settings.backbone, data_format)
    optimizer = make_adam(nets["bottleneck"].parameters() + nets["decoder"].parameters(),
                          float(cfg["lr"]), beta1=settings.beta1, beta2=settings.beta2)
    for net in nets.values():
        net.train()
    batches = _batches(dataset, RD4AD_BATCH, args.steps + 2)

    encoder = method.frozen_forward(method.encoder, channels_last=data_format == "NHWC")

    def paddle_step(images, _seed):  # the step of RD4ADMethod.fit
        enc = encoder(paddle.to_tensor(images))
        loss = rd4ad_loss(enc, nets["decoder"](nets["bottleneck"](enc)), settings.loss_per_image,
                          data_format)
        optimizer.clear_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    if torch is None:
        return paddle_step, None, batches, None
    from torch_reference import RD4ADStep

    reference = RD4ADStep(method, args.rd4ad_backbone, lr=float(cfg["lr"]),
                          betas=(settings.beta1, settings.beta2))
    return paddle_step, lambda images, _seed: reference(images), batches, None


def _timed(step, images, seed):
    start = time.perf_counter()
    loss = step(images, seed)
    return time.perf_counter() - start, loss


CONTAMINATED = 1.15  # in-process torch slower than torch alone by more than this: flagged


def import_torch_first(threads):
    """torch, loaded before Paddle and set to ``threads`` (None when not installed): as in a
    torch user's own script, its libraries start from the environment the user gave."""
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    return torch


def torch_alone(model, args):
    """Seconds per step of ``model``'s torch step in a fresh process without Paddle (the same
    step at the same size, torch's own initial weights), or None if that run fails."""
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, os.path.join(here, "bench_train.py"), "--torch_alone", model,
               "--steps", str(args.steps), "--image_size", str(args.image_size),
               "--cpu_threads", str(args.cpu_threads), "--rd4ad_backbone", args.rd4ad_backbone]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  torch alone failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"]


def run_torch_alone(args):
    """bench_train.py --torch_alone MODEL: print one JSON line (no Paddle is imported)."""
    from torch_reference import time_alone

    print(json.dumps({"seconds_per_step": time_alone(args.torch_alone, args.steps, args.image_size,
                                                     args.cpu_threads, args.rd4ad_backbone)}))


def compare(args, root, torch):
    if torch is None:
        print("torch is not installed: timing Paddle alone (pip install torch for the ratio)")
    import paddle

    dataset = _data(root, args.image_size)
    builders = {"efficientad_s": _efficientad, "rd4ad": _rd4ad}
    print(f"{cpu_model()}; {args.cpu_threads} threads, {args.image_size} px, {args.steps} timed steps each, "
          f"Paddle {paddle.__version__}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""))
    rows = []
    for name in args.compare_models.split(","):
        paddle_step, torch_step, batches, dropout = builders[name](args, dataset, torch)
        label = name if name != "rd4ad" else f"rd4ad ({args.rd4ad_backbone}, batch {RD4AD_BATCH})"
        # two checking steps (weights equal before the first, after one Adam update the second)
        if dropout:
            dropout(False)
        for k in range(2):
            _, loss_p = _timed(paddle_step, batches[k], k)
            if torch_step:
                _, loss_t = _timed(torch_step, batches[k], k)
                print(f"{label}: step {k + 1} loss paddle {loss_p:.6f} torch {loss_t:.6f} "
                      f"|diff| {abs(loss_p - loss_t):.2e} (rel {abs(loss_p - loss_t) / abs(loss_t):.1e})",
                      flush=True)
        if dropout:
            dropout(True)
        p_times, t_times = [], []
        for k in range(2, 2 + args.steps):  # alternate: paddle, torch, paddle, torch ...
            p_times.append(_timed(paddle_step, batches[k], k)[0])
            if torch_step:
                t_times.append(_timed(torch_step, batches[k], k)[0])
            print(f"  step {k - 1}: paddle {p_times[-1] * 1e3:.0f} ms"
                  + (f", torch {t_times[-1] * 1e3:.0f} ms" if t_times else ""), flush=True)
        alone = torch_alone(name, args) if torch_step else None
        rows.append((label, np.median(p_times), np.median(t_times) if t_times else None,
                     np.median(np.asarray(p_times) / np.asarray(t_times)) if t_times else None, alone))
    print(f"\n{'model':<34}{'paddle ms/step':>16}{'torch ms/step':>15}{'ratio':>7}{'torch alone':>13}")
    for label, p, t, ratio, alone in rows:
        line = f"{label:<34}{p * 1e3:>16.0f}"
        line += f"{t * 1e3:>15.0f}{ratio:>7.2f}" if t else f"{'-':>15}{'-':>7}"
        line += f"{alone * 1e3:>13.0f}" if alone else f"{'-':>13}"
        if t and alone and t > CONTAMINATED * alone:
            line += "  <- torch here is slower than torch alone: the ratio flatters Paddle"
        print(line)
    print("(medians over the steps; ratio = median of per-pair paddle/torch; torch alone: the same "
          "step in a fresh process without Paddle)")
