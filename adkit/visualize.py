"""Heat-map overlays for people: the map in colour over the image, the defect outline on top."""
import cv2
import numpy as np


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
        cv2.drawContours(blended, contours, -1, (255, 255, 255), thickness=2)
    return blended


def encode_png(image_rgb):
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
