"""Heat-map overlays for people: the map in colour over the image, the defect outline on top."""
import cv2
import numpy as np


GROUND_TRUTH_COLOUR = (0, 200, 0)  # green: what the labels say; the prediction is white


def line_width(h, w):
    """Outline thickness that stays visible from a 256 px crop to a 6000x4000 photo."""
    return max(2, int(round(min(h, w) / 250)))


def text_scale(h, w):
    """OpenCV font scale in proportion to the image (0.35 at least, for thumbnails)."""
    return max(min(h, w) / 600.0, 0.35)


def overlay(image_rgb, amap, display_range, threshold=None, alpha=0.45):
    """uint8 RGB image with ``amap`` (same HxW) as a JET heat map; contours where map >= threshold.

    ``display_range`` (lo, hi) is fixed per run so colours are comparable between images.
    """
    lo, hi = display_range
    scaled = np.clip((amap - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(image_rgb, 1.0 - alpha, heat, alpha, 0.0)
    if threshold is not None:
        region = (amap >= threshold).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(blended, contours, -1, (255, 255, 255), thickness=line_width(*amap.shape[:2]))
    return blended


def ground_truth_view(image_rgb, mask, height):
    """The plain image with the ground-truth outline (green; none for a good image), on a white
    panel ``height`` pixels tall whose header says what it is: the left half of a report example,
    beside the heat-map overlay (``annotated_overlay``, whose header has the same height)."""
    h, w = image_rgb.shape[:2]
    view = image_rgb.copy()
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(view, contours, -1, GROUND_TRUTH_COLOUR, thickness=line_width(h, w))
    panel = np.full((max(height, h), w, 3), 255, np.uint8)
    header = panel.shape[0] - h
    panel[header:] = view
    if header > 8:
        scale = text_scale(h, w)
        _text(panel, "image, ground truth" if mask is not None and mask.any() else "image",
              (4, header - 8), scale, (0, 120, 0))
    return panel


def side_by_side(left, right, gap=6):
    """Two RGB pictures of the same height next to each other on white."""
    h = max(left.shape[0], right.shape[0])
    canvas = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    canvas[:left.shape[0], :left.shape[1]] = left
    canvas[:right.shape[0], left.shape[1] + gap:] = right
    return canvas


def encode_png(image):
    """PNG bytes of an RGB (HxWx3) or single-channel (HxW) uint8 image."""
    ok, buf = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _text(canvas, text, org, scale, colour=(20, 20, 20)):
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                max(1, int(round(scale * 2))), cv2.LINE_AA)


def annotated_overlay(image_rgb, amap, display_range, threshold, score, label):
    """``overlay`` plus what a person needs to read it: a header with the score and the decision,
    and a colour bar on the right with the scale's ends and the threshold marked."""
    lo, hi = display_range
    body = overlay(image_rgb, amap, display_range, threshold)
    h, w = body.shape[:2]
    scale = text_scale(h, w)
    line = int(30 * scale) + 6
    bar_w = max(10, w // 24)
    label_w = int(110 * scale) + 8
    canvas = np.full((h + line, w + bar_w + label_w + 8, 3), 255, np.uint8)
    canvas[line:, :w] = body
    verdict = {"defect": "DEFECT", "good": "good"}.get(label, "no threshold")
    colour = (200, 20, 20) if label == "defect" else (20, 110, 20) if label == "good" else (20, 20, 20)
    limit = "" if threshold is None else f"  (threshold {threshold:.4g})"
    _text(canvas, f"score {score:.4g}  {verdict}{limit}", (4, line - 8), scale, colour)
    # Colour bar: top = hi, bottom = lo, the same JET mapping as the overlay.
    ramp = np.linspace(255, 0, h).astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    x0 = w + 4
    canvas[line:, x0:x0 + bar_w] = bar
    ticks = [(hi, 0), (lo, h - 1)]
    if threshold is not None and lo < threshold < hi:
        ty = int(round((hi - threshold) / (hi - lo) * (h - 1)))
        canvas[line + max(ty - 1, 0):line + ty + 2, x0:x0 + bar_w] = 255
        ticks.append((threshold, ty))
    for value, y in ticks:
        y_text = min(max(line + y + int(8 * scale), line + int(14 * scale)), line + h - 2)
        _text(canvas, f"{value:.3g}", (x0 + bar_w + 4, y_text), scale * 0.8)
    return canvas
