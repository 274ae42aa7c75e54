"""Torch eager versions of the EfficientAD-S and RD4AD training steps, for timing against Paddle
(``bench_train.py --compare_torch``). Benchmark-only: the package never imports torch, and torch
is in no requirements file.

Written from the papers (EfficientAD: Batzner et al., WACV 2024; RD4AD: Deng & Li, CVPR 2022)
with the layer names of this project's Paddle networks, so ``copy_from_paddle`` moves weights by
name (conv weights have the same layout in both frameworks; BN statistics are renamed).

    EfficientAD-S: frozen PDN-S teacher (384 ch), PDN-S student (768 ch), autoencoder; losses:
      hard feature loss (0.999 quantile), AE loss, student-AE loss (no ImageNet penalty);
      Adam lr 1e-4, weight decay 1e-5 (coupled L2, as Paddle's).
    RD4AD: frozen ResNet / Wide-ResNet encoder (ImageNet-normalised input), OCBE bottleneck,
      reverse decoder, sum over scales of mean(1 - cos); Adam lr 0.005, betas (0.5, 0.999).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x):
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x - mean) / std


# -- weight transfer ---------------------------------------------------------------------------

_BN_RENAMES = {"_mean": "running_mean", "_variance": "running_var"}


def copy_from_paddle(torch_module, paddle_layer):
    """Copy every parameter and buffer of ``paddle_layer`` into the same-named entry of
    ``torch_module`` (BN '_mean'/'_variance' -> 'running_mean'/'running_var')."""
    target = torch_module.state_dict()
    copied = set()
    for name, value in paddle_layer.state_dict().items():
        head, _, leaf = name.rpartition(".")
        key = (head + "." if head else "") + _BN_RENAMES.get(leaf, leaf)
        if key not in target:
            raise KeyError(f"{name}: no torch entry {key}")
        array = np.asarray(value.numpy())
        if tuple(target[key].shape) != array.shape:
            raise ValueError(f"{key}: torch {tuple(target[key].shape)} vs paddle {array.shape}")
        target[key] = torch.from_numpy(array.copy())
        copied.add(key)
    missing = [k for k in target if k not in copied and not k.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"not in the paddle layer: {missing[:5]}")
    torch_module.load_state_dict(target)


# -- EfficientAD -------------------------------------------------------------------------------

class PDNSmall(nn.Module):
    """conv4x4(128)-relu-avgpool2-conv4x4(256)-relu-avgpool2-conv3x3(256)-relu-conv4x4(out), no
    padding (the paper's PDN-S as trained, 256 px -> 56x56)."""

    def __init__(self, out_channels=384):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 128, 4)
        self.avgpool1 = nn.AvgPool2d(2, 2)
        self.conv2 = nn.Conv2d(128, 256, 4)
        self.avgpool2 = nn.AvgPool2d(2, 2)
        self.conv3 = nn.Conv2d(256, 256, 3)
        self.conv4 = nn.Conv2d(256, out_channels, 4)

    def forward(self, x):
        x = self.avgpool1(F.relu(self.conv1(x)))
        x = self.avgpool2(F.relu(self.conv2(x)))
        return self.conv4(F.relu(self.conv3(x)))


class AutoEncoder(nn.Module):
    """Six stride-2 convs to a 64x1x1 code; six (bilinear upsample, conv4x4 pad 2, relu,
    dropout 0.2); upsample to the PDN size; conv3x3-relu-conv3x3 to 384 channels."""

    def __init__(self, image_size=256, out_size=56, out_channels=384):
        super().__init__()
        widths = (3, 32, 32, 64, 64, 64)
        for i in range(5):
            setattr(self, f"enconv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1))
        self.enconv6 = nn.Conv2d(64, 64, image_size // 32)
        for i in range(6):
            setattr(self, f"deconv{i + 1}", nn.Conv2d(64, 64, 4, 1, 2))
        self.deconv7 = nn.Conv2d(64, 64, 3, 1, 1)
        self.deconv8 = nn.Conv2d(64, out_channels, 3, 1, 1)
        self.dropout = nn.Dropout(0.2)
        scale = image_size / 256
        self.sizes = tuple(max(1, int(s * scale + 0.5)) for s in (3, 8, 15, 32, 63, 127))
        self.out_size = out_size

    def forward(self, x):
        for i in range(1, 6):
            x = F.relu(getattr(self, f"enconv{i}")(x))
        x = self.enconv6(x)
        for i, side in enumerate(self.sizes):
            x = F.interpolate(x, size=side, mode="bilinear", align_corners=False)
            x = self.dropout(F.relu(getattr(self, f"deconv{i + 1}")(x)))
        x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return self.deconv8(F.relu(self.deconv7(x)))


def pdn_out_size(image_size):
    """Side of PDN-S's unpadded output: 256 px -> 56."""
    side = (image_size - 3) // 2
    side = (side - 3) // 2
    return side - 2 - 3


class EfficientADStep:
    """nelson1425's training step without the penalty image. With ``paddle_method`` its weights
    and teacher statistics are copied in; without, torch's own initialisation (for timing torch
    alone, ``time_alone``)."""

    def __init__(self, paddle_method=None, lr=1e-4, weight_decay=1e-5, image_size=256):
        if paddle_method is not None:
            from adkit.core.image_io import image_hw

            height, width = image_hw(paddle_method.cfg["image_size"])
            if height != width:
                raise ValueError(f"the torch reference step takes square images, got {height}x{width}")
            image_size = height
        out_size = paddle_method.autoencoder.out_size if paddle_method else pdn_out_size(image_size)
        self.teacher, self.student = PDNSmall(384), PDNSmall(768)
        self.autoencoder = AutoEncoder(image_size, out_size)
        self.mean, self.std = torch.zeros(1, 384, 1, 1), torch.ones(1, 384, 1, 1)
        if paddle_method is not None:
            for net, role in ((self.teacher, "teacher"), (self.student, "student"),
                              (self.autoencoder, "autoencoder")):
                copy_from_paddle(net, getattr(paddle_method, role))
            norm = paddle_method.normalization
            self.mean = torch.from_numpy(np.asarray(norm["teacher_mean"], np.float32)).reshape(1, -1, 1, 1)
            self.std = torch.from_numpy(np.asarray(norm["teacher_std"], np.float32)).reshape(1, -1, 1, 1)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student.train()
        self.autoencoder.train()
        self.optimizer = torch.optim.Adam(
            list(self.student.parameters()) + list(self.autoencoder.parameters()), lr=lr,
            weight_decay=weight_decay)

    def set_dropout(self, on):
        self.autoencoder.dropout.train(on)

    def __call__(self, images, ae_images):
        x_st = imagenet_normalize(torch.from_numpy(images))
        x_ae = imagenet_normalize(torch.from_numpy(ae_images))
        with torch.no_grad():
            t_st = (self.teacher(x_st) - self.mean) / self.std
            t_ae = (self.teacher(x_ae) - self.mean) / self.std
        s_st = self.student(x_st)
        distance = (t_st - s_st[:, :384]) ** 2
        d_hard = torch.quantile(distance.detach().flatten(), 0.999)
        loss_hard = distance[distance >= d_hard].mean()
        ae_out = self.autoencoder(x_ae)
        s_ae = self.student(x_ae)
        loss_ae = ((t_ae - ae_out) ** 2).mean()
        loss_stae = ((ae_out - s_ae[:, 384:]) ** 2).mean()
        loss = loss_hard + loss_ae + loss_stae
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


# -- RD4AD -------------------------------------------------------------------------------------

def conv3x3(i, o, stride=1):
    return nn.Conv2d(i, o, 3, stride, 1, bias=False)


def conv1x1(i, o, stride=1):
    return nn.Conv2d(i, o, 1, stride, bias=False)


def resampling(i, o, stride, transposed):
    if transposed and stride == 2:
        return nn.ConvTranspose2d(i, o, 2, 2, bias=False)
    return conv3x3(i, o, stride)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, width_per_group=64,
                 transposed=False):
        super().__init__()
        self.conv1 = resampling(inplanes, planes, stride, transposed)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, width_per_group=64,
                 transposed=False):
        super().__init__()
        width = planes * width_per_group // 64
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = resampling(width, width, stride, transposed)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


def make_stage(block, inplanes, planes, blocks, stride=1, width_per_group=64, transposed=False):
    out = planes * block.expansion
    shortcut = None
    if stride != 1 or inplanes != out:
        projection = (nn.ConvTranspose2d(inplanes, out, 2, 2, bias=False)
                      if transposed and stride == 2 else conv1x1(inplanes, out, stride))
        shortcut = nn.Sequential(projection, nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, shortcut, width_per_group, transposed)]
    layers += [block(out, planes, 1, None, width_per_group, transposed) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetTrunk(nn.Module):
    def __init__(self, block, layers, width_per_group=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, n) in enumerate(zip((64, 128, 256), layers), start=1):
            setattr(self, f"layer{index}", make_stage(block, inplanes, planes, n,
                                                      1 if index == 1 else 2, width_per_group))
            inplanes = planes * block.expansion

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


# backbone -> (block, trunk depths, OCBE blocks, decoder depths, width_per_group)
RESNET_ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2), 2, (2, 2, 2), 64),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6), 3, (3, 4, 6), 128),
}


class OCBE(nn.Module):
    def __init__(self, channels, block, blocks, width_per_group):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = conv3x3(c1, c2, 2)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv2 = conv3x3(c2, c3, 2)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv3 = conv3x3(c2, c3, 2)
        self.bn3 = nn.BatchNorm2d(c3)
        self.bn_layer = make_stage(block, 3 * c3, 2 * c3 // block.expansion, blocks, 2,
                                   width_per_group)

    def forward(self, feats):
        f1, f2, f3 = feats
        a = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(f1))))))
        b = F.relu(self.bn3(self.conv3(f2)))
        return self.bn_layer(torch.cat([a, b, f3], 1))


class ReverseDecoder(nn.Module):
    def __init__(self, channels, block, layers, width_per_group):
        super().__init__()
        inplanes = 2 * channels[2]
        for index, (out, n) in enumerate(zip(channels[::-1], layers), start=1):
            setattr(self, f"layer{index}", make_stage(block, inplanes, out // block.expansion, n,
                                                      2, width_per_group, transposed=True))
            inplanes = out

    def forward(self, code):
        d3 = self.layer1(code)
        d2 = self.layer2(d3)
        return [self.layer3(d2), d2, d3]


class RD4ADStep:
    """Frozen encoder, trained OCBE + decoder, per-pixel cosine loss (the paper's Eq. 2)."""

    def __init__(self, paddle_method, backbone, lr=0.005, betas=(0.5, 0.999)):
        if backbone not in RESNET_ARCHITECTURES:
            raise ValueError(f"torch reference has no {backbone} (only {', '.join(RESNET_ARCHITECTURES)})")
        block, depths, ocbe_blocks, decoder_depths, width = RESNET_ARCHITECTURES[backbone]
        self.encoder = ResNetTrunk(block, depths, width)
        channels = tuple(c * block.expansion for c in (64, 128, 256))
        self.bottleneck = OCBE(channels, block, ocbe_blocks, width)
        self.decoder = ReverseDecoder(channels, block, decoder_depths, width)
        if paddle_method is not None:  # None: torch's own initialisation (time_alone)
            copy_from_paddle(self.encoder, paddle_method.encoder.net)
            copy_from_paddle(self.bottleneck, paddle_method.bottleneck)
            copy_from_paddle(self.decoder, paddle_method.decoder)
        self.encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.bottleneck.train()
        self.decoder.train()
        self.optimizer = torch.optim.Adam(
            list(self.bottleneck.parameters()) + list(self.decoder.parameters()), lr=lr, betas=betas)

    def __call__(self, images):
        with torch.no_grad():
            enc = self.encoder(imagenet_normalize(torch.from_numpy(images)))
        dec = self.decoder(self.bottleneck(enc))
        loss = sum((1 - F.cosine_similarity(e, d, dim=1)).mean() for e, d in zip(enc, dec))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


# -- torch alone -------------------------------------------------------------------------------

def time_alone(model, steps, image_size, threads, backbone="wide_resnet50_2"):
    """Median seconds per training step of ``model`` ("efficientad_s" or "rd4ad") in this process
    with torch alone (run it in a fresh one: no Paddle loaded, no variables set for Paddle's
    libraries): the reference the in-process torch times are checked against."""
    import time

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if model == "efficientad_s":
        step, batch = EfficientADStep(image_size=image_size), 1
        run = lambda images: step(images, images)  # noqa: E731
    else:
        step, batch = RD4ADStep(None, backbone), 16
        run = step
    times = []
    for k in range(steps + 2):  # two warm-up steps
        images = rng.random((batch, 3, image_size, image_size), dtype=np.float32)
        start = time.perf_counter()
        run(images)
        if k >= 2:
            times.append(time.perf_counter() - start)
    return float(np.median(times))

