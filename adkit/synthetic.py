"""Seeded synthetic defects on good images.

When a user has only good images, these defects stand in for real anomalies: they give a
validation split on which a pass/fail threshold can be calibrated, and they let a folder of good
images be turned into a full MVTec-layout dataset (image + ground-truth mask per defect).

Every kind returns ``(defective, mask)`` where the mask is exactly the set of pixels that differ
from the input, so the ground truth never marks unchanged pixels nor misses changed ones.
"""
import cv2
import numpy as np

MIN_AREA, MAX_AREA = 0.003, 0.08  # defect area as a fraction of the image
MAX_TRIES = 50
PUSH = 24  # step given to mask pixels that blending left equal to the original


def _perlin(shape, res, rng):
    """2-D gradient (Perlin) noise of `shape`, with `res` = (rows, cols) lattice cells; roughly in [-0.7, 0.7]."""
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0.0, 2 * np.pi, (ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y, x = np.arange(h) * (ry / h), np.arange(w) * (rx / w)
    yi, xi = y.astype(int), x.astype(int)
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy, dx):  # dot product of the corner gradient with the offset to that corner
        rows, cols = (yi + dy)[:, None], (xi + dx)[None, :]
        return gy[rows, cols] * (fy - dy) + gx[rows, cols] * (fx - dx)

    uy, ux = [t * t * t * (t * (t * 6 - 15) + 10) for t in (fy, fx)]  # smooth fade: no lattice seams
    top = corner(0, 0) + ux * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + ux * (corner(1, 1) - corner(1, 0))
    return top + uy * (bottom - top)


def _cells(shape, cell):
    """Lattice resolution giving square cells of about `cell` pixels."""
    return tuple(max(1, int(round(n / cell))) for n in shape)


def _draw_cut_paste(image, rng):
    h, w = image.shape[:2]
    area = rng.uniform(0.006, 0.06) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    ph = min(np.sqrt(area / aspect), 0.8 * h)
    pw = min(area / ph, 0.8 * w)
    low, high = np.array([pw / 2, ph / 2]), np.array([w - pw / 2, h - ph / 2])
    src, dst = rng.uniform(low, high), rng.uniform(low, high)
    if np.linalg.norm(dst - src) < 0.5 * max(pw, ph):
        return None, np.zeros((h, w), bool)  # mostly overlapping: too similar to the original, redraw
    angle = rng.uniform(-45, 45) if rng.random() < 0.5 else 0.0
    # One affine map takes the source rectangle onto the destination; its corners give the mask.
    m = cv2.getRotationMatrix2D((float(src[0]), float(src[1])), angle, 1.0)
    m[:, 2] += dst - src
    corners = src + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [pw / 2, ph / 2]
    poly = np.round(corners @ m[:, :2].T + m[:, 2]).astype(np.int32)
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [poly], 1)
    flags = cv2.INTER_LINEAR if angle else cv2.INTER_NEAREST
    draft = cv2.warpAffine(image, m, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    if rng.random() < 0.5:  # a pasted patch often differs in lighting as well
        sign = rng.choice([-1.0, 1.0], 2)  # gain and offset kept away from the identity
        draft = draft * (1 + sign[0] * rng.uniform(0.1, 0.25)) + sign[1] * rng.uniform(5, 25)
    return draft, region.astype(bool)


def _draw_scratch(image, rng):
    h, w = image.shape[:2]
    scale = min(h, w) / 256
    thick = max(1, int(round(rng.integers(1, 4) * scale)))
    # Total length follows from a target area so that thin lines still reach the minimum area.
    total = rng.uniform(0.005, 0.015) * h * w / thick
    step = max(2.0, 3 * scale)
    luma = image.astype(np.float32).mean(-1)
    draft, region = image.astype(np.float32), np.zeros((h, w), bool)
    n = int(rng.integers(1, 4))
    for length in total * rng.dirichlet(np.full(n, 4.0)):
        p, heading, turn = rng.uniform([0, 0], [w, h]), rng.uniform(0, 2 * np.pi), 0.0
        points = [p]
        for noise in rng.normal(0.0, 0.03, max(2, int(length / step))):
            turn = 0.9 * turn + noise  # slowly varying curvature: a smooth curve, not a zigzag
            heading += turn
            d = step * np.array([np.cos(heading), np.sin(heading)])
            if not 0 <= p[0] + d[0] < w:  # bounce off the border so the whole length stays visible
                d[0], heading = -d[0], np.pi - heading
            if not 0 <= p[1] + d[1] < h:
                d[1], heading = -d[1], -heading
            p = p + d
            points.append(p)
        line = np.zeros((h, w), np.uint8)
        # truncate, not round: points lie in [0, size), and rounding could put a short line off-image
        cv2.polylines(line, [np.array(points).astype(np.int32)], False, 1)
        # widen a 1-px line with a disc: cv2's own thickness t draws lines about t + 2 px wide
        line = cv2.dilate(line, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thick, thick))).astype(bool)
        # Dark on a bright background, bright on a dark one, so the scratch clearly stands out.
        k = rng.uniform(0.5, 0.8)
        pixels = image[line].astype(np.float32)
        draft[line] = pixels * (1 - k) if luma[line].mean() >= 128 else pixels + (255 - pixels) * k
        region |= line
    return draft, region


def _draw_perlin_blotch(image, rng):
    h, w = image.shape[:2]
    frac = rng.uniform(0.006, 0.05)
    radius = np.sqrt(frac * h * w / np.pi)
    cell = radius * rng.uniform(0.7, 2.0)  # noise features comparable to the blob: a ragged outline
    noise = _perlin((h, w), _cells((h, w), cell), rng) + 0.5 * _perlin((h, w), _cells((h, w), cell / 2), rng)
    cy = rng.uniform(min(radius, h / 2), max(h - radius, h / 2))
    cx = rng.uniform(min(radius, w / 2), max(w - radius, w / 2))
    yy, xx = np.ogrid[:h, :w]
    field = noise - 0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / radius ** 2  # keeps the blob in one place
    blob = (field > np.quantile(field, 1 - frac)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(blob, connectivity=8)
    if count < 2:
        return None, np.zeros((h, w), bool)
    region = labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])  # one blob, not scattered specks
    if rng.random() < 0.5:  # foreign texture: the image itself, flipped, shifted and recoloured
        tex = image[::-1] if rng.random() < 0.5 else image[:, ::-1]
        tex = np.roll(tex, (int(rng.integers(h)), int(rng.integers(w))), (0, 1)).astype(np.float32)
        tex = tex + rng.choice([-1.0, 1.0], 3) * rng.uniform(30, 80, 3)
    else:  # foreign texture: two-colour fine noise
        fine = _perlin((h, w), _cells((h, w), max(4.0, cell / 4)), rng)
        fine = (fine - fine.min()) / (np.ptp(fine) + 1e-6)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        tex = c0 + fine[..., None] * (c1 - c0)
    beta = rng.uniform(0.5, 0.9)  # texture share: high enough that the blotch is visible
    return (1 - beta) * image.astype(np.float32) + beta * tex, region


def _exact(image, draft, region):
    """Write `draft` into a copy of `image` on `region` only, and make every region pixel differ."""
    out = image.copy()
    out[region] = np.clip(np.rint(draft[region]), 0, 255).astype(np.uint8)
    same = region & (out == image).all(-1)
    v = image[same].astype(np.int16)
    out[same] = np.where(v < 128, v + PUSH, v - PUSH).astype(np.uint8)
    return out, (out != image).any(-1).astype(np.uint8)


def _kind(draw):
    """A defect function from a drawing function: redraws until the area is in bounds."""
    def defect(image, rng):
        for _ in range(MAX_TRIES):
            draft, region = draw(image, rng)
            if MIN_AREA <= region.mean() <= MAX_AREA:
                return _exact(image, draft, region)
        raise RuntimeError(f"{draw.__name__}: no defect with area in [{MIN_AREA}, {MAX_AREA}] "
                           f"after {MAX_TRIES} tries on a {image.shape[1]}x{image.shape[0]} image")
    defect.__name__ = draw.__name__.replace("_draw_", "")
    return defect


KINDS = {"cut_paste": _kind(_draw_cut_paste), "scratch": _kind(_draw_scratch),
         "perlin_blotch": _kind(_draw_perlin_blotch)}
DEFAULT_KINDS = ("cut_paste", "scratch", "perlin_blotch")


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; known kinds: {', '.join(KINDS)}")


def make_defect(image, kind, rng):
    """One defect of `kind` on a copy of `image` (uint8 RGB HxWx3, at least 32x32).

    Returns (image uint8 HxWx3, mask uint8 HxW in {0, 1}); the mask is exactly the set of pixels
    that differ from the input, and covers about 0.3% to 8% of the image. `image` is not modified.
    """
    _check_kind(kind)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 32:
        raise ValueError(f"expected a uint8 RGB image of at least 32x32, got {image.dtype} {image.shape}")
    return KINDS[kind](image, rng)


def synthetic_defects(images, seed, kinds=DEFAULT_KINDS, per_image=1):
    """`per_image` defects of each kind on each image, as a list of (image, mask, kind).

    Ordered by image, then kind, then repetition. Each defect depends only on (seed, image index,
    kind index, repetition), so adding images never changes the defects of earlier ones.
    """
    for kind in kinds:
        _check_kind(kind)
    return [(*make_defect(image, kind, np.random.default_rng([seed, i, k, r])), kind)
            for i, image in enumerate(images) for k, kind in enumerate(kinds) for r in range(per_image)]
