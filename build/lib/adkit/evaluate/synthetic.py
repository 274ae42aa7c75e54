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


def _visible(image, draft, support):
    """The pixels of `support` where `draft` still differs from `image` once rounded to uint8.

    Soft-edged kinds fade out to nothing; cutting the mask where the fade rounds away keeps the
    mask exact without pushing faint fringe pixels into a visible hard step."""
    rounded = np.clip(np.rint(draft), 0, 255)
    return support & (rounded != image).any(-1)


def _luma(pixels):
    return pixels.astype(np.float32).mean(-1)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _hsv_to_rgb(hue, sat, val):
    """RGB 0-255 of one colour given hue in degrees and saturation, value in [0, 1]."""
    hsv = np.array([[[hue % 360, sat, val]]], np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] * 255


def _blob_field(shape, rng, frac, roughness):
    """A field > 0 on a rotated ellipse of about `frac` of the image with a Perlin-wobbled
    outline, rising to about 1 at its centre: its sign gives a shape, its value a soft alpha."""
    h, w = shape
    area = frac * h * w
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    a = np.sqrt(area / np.pi * aspect)
    b = area / (np.pi * a)
    angle = rng.uniform(0, np.pi)
    reach = max(a, b)  # keep the whole blob inside the image when it fits
    cy = rng.uniform(min(reach, h / 2), max(h - reach, h / 2))
    cx = rng.uniform(min(reach, w / 2), max(w - reach, w / 2))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = (yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)
    noise = _perlin(shape, _cells(shape, 1.5 * min(a, b)), rng)
    return 1 - (u / a) ** 2 - (v / b) ** 2 + roughness * noise


def _walk(start, heading, length, step, jag, shape, rng):
    """A jagged path: each step turns at random but is pulled back to the overall heading, so
    the path zigzags along a straight-ish course. Bounces off the border to stay visible."""
    h, w = shape
    p, course, points = np.array(start, float), heading, [np.array(start, float)]
    direction = course
    for noise in rng.normal(0.0, jag, max(2, int(length / step))):
        direction = course + 0.5 * (direction - course) + noise
        d = step * np.array([np.cos(direction), np.sin(direction)])
        if not 0 <= p[0] + d[0] < w:
            d[0], course, direction = -d[0], np.pi - course, np.pi - direction
        if not 0 <= p[1] + d[1] < h:
            d[1], course, direction = -d[1], -course, -direction
        p = p + d
        points.append(p)
    return np.array(points)


def _thick_line(points, thick, shape):
    line = np.zeros(shape, np.uint8)
    cv2.polylines(line, [points.astype(np.int32)], False, 1)  # truncate: points lie in [0, size)
    return cv2.dilate(line, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thick, thick))).astype(bool)


def _draw_crack(image, rng):
    h, w = image.shape[:2]
    scale = min(h, w) / 256
    thick = max(1, int(round(rng.uniform(1, 2.5) * scale)))
    total = rng.uniform(0.004, 0.015) * h * w / thick  # length from a target area, as for scratches
    step = max(2.0, 4 * scale)
    main_share = rng.uniform(0.5, 0.7)
    trunk = _walk(rng.uniform([0, 0], [w, h]), rng.uniform(0, 2 * np.pi), main_share * total, step,
                  0.5, (h, w), rng)
    paths = [(trunk, thick)]
    heading = np.arctan2(*(trunk[-1] - trunk[0])[::-1])
    n_branches = int(rng.integers(2, 5))
    for length in (1 - main_share) * total * rng.dirichlet(np.full(n_branches, 2.0)):
        fork = trunk[rng.integers(len(trunk))]  # branches split off the trunk at an angle
        angle = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1) + rng.choice([0.0, np.pi])
        paths.append((_walk(fork, angle, length, step, 0.5, (h, w), rng), max(1, thick - 1)))
    draft, region = image.astype(np.float32), np.zeros((h, w), bool)
    for points, width in paths:
        line = _thick_line(points, width, (h, w))
        draft[line] = image[line] * (1 - rng.uniform(0.55, 0.85))  # always darker: a shadowed gap
        region |= line
    return draft, region


def _draw_stain(image, rng):
    h, w = image.shape[:2]
    field = _blob_field((h, w), rng, rng.uniform(0.008, 0.05), roughness=0.4)
    support = field > 0
    if not support.any():
        return None, support
    alpha = _smoothstep(field / rng.uniform(0.4, 0.8))[..., None] * rng.uniform(0.35, 0.7)
    base = image[support].astype(np.float32).mean(0)
    # Darker on a bright part, lighter on a dark one, with a colour cast: a discoloured tint.
    shift = (-1.0 if _luma(base) >= 128 else 1.0) * rng.uniform(50, 110)
    colour = np.clip(base + shift + rng.uniform(-40, 40, 3), 0, 255)
    draft = image * (1 - alpha) + colour * alpha
    return draft, _visible(image, draft, support)


def _side_bite(shape, area, rng):
    """A jagged half-ellipse bitten out of one side of the image, as polygon vertices (x, y)."""
    h, w = shape
    side = int(rng.integers(4))  # top, bottom, left, right
    along, across = (w, h) if side < 2 else (h, w)
    ratio = np.exp(rng.uniform(np.log(0.4), np.log(1.5)))  # depth / half-width
    half = min(np.sqrt(2 * area / (np.pi * ratio)), 0.45 * along)
    depth = min(ratio * half, 0.6 * across)
    centre = rng.uniform(half, along - half)
    t = np.linspace(0, np.pi, 32)
    jag = np.cumsum(rng.normal(0, 0.06, t.size))
    r = np.maximum(1 + jag - np.linspace(jag[0], jag[-1], t.size), 0.3)  # pinned ends stay on the border
    x, y = centre + half * r * np.cos(t), depth * r * np.sin(t).clip(0)
    return [np.stack([x, y], 1), np.stack([x, h - 1 - y], 1),
            np.stack([y, x], 1), np.stack([w - 1 - y, x], 1)][side]


def _corner_cut(shape, area, rng):
    """A corner cut off along a jagged line, as polygon vertices (x, y)."""
    h, w = shape
    ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    a = min(np.sqrt(2 * area * ratio), 0.7 * w)
    b = min(2 * area / a, 0.7 * h)
    t = np.linspace(0, 1, 24)[:, None]
    cut = (1 - t) * [a, 0] + t * [0, b]
    jag = np.cumsum(rng.normal(0, 0.04 * np.hypot(a, b), t.size))
    jag -= np.linspace(jag[0], jag[-1], t.size)
    normal = np.array([b, a]) / np.hypot(a, b)  # perpendicular to the cut, pointing inwards
    points = np.vstack([[0, 0], cut + jag[:, None] * normal])
    flip_x, flip_y = rng.integers(2, size=2)
    if flip_x:
        points[:, 0] = w - 1 - points[:, 0]
    if flip_y:
        points[:, 1] = h - 1 - points[:, 1]
    return points


def _draw_missing_piece(image, rng):
    h, w = image.shape[:2]
    area = rng.uniform(0.01, 0.06) * h * w
    points = _corner_cut((h, w), area, rng) if rng.random() < 0.5 else _side_bite((h, w), area, rng)
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(points).astype(np.int32)], 1)
    region = region.astype(bool)
    if not region.any():
        return None, region
    # What shows through the hole: a flat background, the far end of the range from the part.
    dark = _luma(image[region]).mean() >= 128
    level = rng.uniform(0, 20) if dark else rng.uniform(235, 255)
    colour = np.clip(level + rng.uniform(-3, 3, 3), 0, 255)
    return np.broadcast_to(colour, image.shape).astype(np.float32), region


def _shift(mask, dy, dx):
    """`mask` moved by (dy, dx) whole pixels; what moves in from outside is empty."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _draw_foreign_object(image, rng):
    h, w = image.shape[:2]
    frac = rng.uniform(0.006, 0.03)
    body = _blob_field((h, w), rng, frac, roughness=0.3) > 0
    if not body.any():
        return None, body
    # Opaque, coloured, and at the other end of the brightness range from what it lies on.
    bright = _luma(image[body]).mean() < 128
    colour = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.3, 0.9),
                         rng.uniform(0.7, 0.95) if bright else rng.uniform(0.05, 0.3))
    radius = np.sqrt(frac * h * w / np.pi)
    grain = _perlin((h, w), _cells((h, w), max(2.0, radius / 3)), rng)
    texture = colour + rng.uniform(10, 30) * grain[..., None] + rng.normal(0, 4, (h, w, 1))
    draft = image.astype(np.float32)
    draft[body] = texture[body]
    width = max(1, int(round(min(h, w) / 256)))
    rim = body & ~cv2.erode(body.astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)).astype(bool)
    draft[rim] *= 0.7  # a darker outline where the object meets the surface
    # A hard shadow cast away from a light source, beside the object.
    heading = rng.uniform(0, 2 * np.pi)
    offset = max(1.0, radius * rng.uniform(0.15, 0.3))
    dy, dx = int(round(offset * np.sin(heading))), int(round(offset * np.cos(heading)))
    shadow = _shift(body, dy, dx) & ~body
    draft[shadow] = image[shadow] * rng.uniform(0.55, 0.75)
    return draft, body | _visible(image, draft, shadow)


def _draw_colour_shift(image, rng):
    h, w = image.shape[:2]
    field = _blob_field((h, w), rng, rng.uniform(0.01, 0.06), roughness=0.3)
    support = field > 0
    if not support.any():
        return None, support
    alpha = _smoothstep(field / rng.uniform(0.15, 0.35))[..., None]  # soft-ish edge, solid core
    hsv = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    mean_sat, mean_val = sat[support].mean(), val[support].mean()
    # Each shift moves away from the nearer end of its range, so it shows even on grey or black.
    hue_shift = rng.choice([-1.0, 1.0]) * rng.uniform(40, 140)
    sat_shift = (1.0 if mean_sat < 0.5 else -1.0) * rng.uniform(0.25, 0.5)
    val_shift = (1.0 if mean_val < 0.5 else -1.0) * rng.uniform(0.08, 0.2)
    shifted = np.stack([(hue + hue_shift) % 360, np.clip(sat + sat_shift, 0, 1),
                        np.clip(val + val_shift, 0, 1)], -1)
    target = cv2.cvtColor(shifted.astype(np.float32), cv2.COLOR_HSV2RGB) * 255
    draft = image * (1 - alpha) + target * alpha
    return draft, _visible(image, draft, support)


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
         "perlin_blotch": _kind(_draw_perlin_blotch), "crack": _kind(_draw_crack),
         "stain": _kind(_draw_stain), "missing_piece": _kind(_draw_missing_piece),
         "foreign_object": _kind(_draw_foreign_object), "colour_shift": _kind(_draw_colour_shift)}
DEFAULT_KINDS = ("cut_paste", "scratch", "perlin_blotch")  # threshold calibration: keep as is
# The defects tools/make_synthetic.py draws: one per common kind of real surface defect.
DATASET_KINDS = ("scratch", "crack", "stain", "missing_piece", "foreign_object", "colour_shift")


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; known kinds: {', '.join(KINDS)}")


def parse_kinds(text, repeated_hint=""):
    """--kinds "a,b,..." of the dataset tools -> a tuple of KINDS names; UserError for an empty,
    unknown or repeated one (``repeated_hint`` is added to the last)."""
    from adkit.core.errors import UserError

    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise UserError(f"--kinds {text!r}: no kind given; known kinds: {', '.join(KINDS)}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UserError(f"--kinds: unknown kind {unknown[0]!r}; known kinds: {', '.join(KINDS)}")
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise UserError(f"--kinds: {repeated[0]!r} given twice{repeated_hint}")
    return tuple(kinds)


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


def make_defect_in_window(image, kind, rng, window):
    """One defect of ``kind`` drawn at the photo's own pixel size: inside a random ``window``
    (height, width) of ``image`` (clipped to the photo), sized as make_defect sizes it for an
    image of the window's size. For tiled models, whose tiles are windows of that size: the
    defect looks to a tile as it would on a whole image of the tile's size. Returns (image,
    mask) at the photo's size, as make_defect."""
    h, w = image.shape[:2]
    wh, ww = min(int(window[0]), h), min(int(window[1]), w)
    top, left = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
    patch, patch_mask = make_defect(np.ascontiguousarray(image[top:top + wh, left:left + ww]), kind, rng)
    out, mask = image.copy(), np.zeros((h, w), np.uint8)
    out[top:top + wh, left:left + ww] = patch
    mask[top:top + wh, left:left + ww] = patch_mask
    return out, mask
