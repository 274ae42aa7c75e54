"""Reading images and masks from disk (and writing PNGs), and the one preprocessing step every
mode shares."""
import os

import cv2
import numpy as np

from adkit.core.errors import UserError

# A corrupt file must give our one error line, not an OpenCV warning before it.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder):
    """Sorted image files directly inside ``folder`` (hidden files skipped)."""
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


RUN_MARKER = "run.json"  # in every folder a run of this project wrote (adkit.outputs.folders)


def find_images(folder, option):
    """Every image file under ``folder`` at any depth, sorted; hidden files and folders are
    skipped, and so are folders a run of this project wrote (they hold ``run.json``: an
    ``--output_dir`` inside the input must not be read back as input on the next run).
    ``option`` names the command-line option in the errors."""
    if not os.path.isdir(folder):
        raise UserError(f"{option} {folder}: folder not found")
    paths = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not os.path.isfile(os.path.join(root, d, RUN_MARKER))]
        paths += [os.path.join(root, name) for name in names
                  if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")]
    paths.sort()
    if not paths:
        raise UserError(f"{option} {folder}: no images found (searched subfolders too)")
    return paths


def collect_images(img_path):
    """--img_path: one image file, or every image under a folder (subfolders too), sorted.
    Returns (root, paths); outputs mirror each path relative to root."""
    if os.path.isdir(img_path):
        return img_path, find_images(img_path, "--img_path")
    if os.path.isfile(img_path):
        return os.path.dirname(img_path) or ".", [img_path]
    raise UserError(f"--img_path {img_path}: no such file or folder")


def folder_label(path):
    """(defect type, ground truth) an MVTec-style test tree gives an image through its folder:
    a folder named 'good' holds good parts, and so is a folder beside one named 'good' a defect
    type. ('', '') when the folders say nothing (an unlabelled batch of photos)."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(folder)
    if name == "good":
        return "good", "good"
    if os.path.isdir(os.path.join(os.path.dirname(folder), "good")):
        return name, "defect"
    return "", ""


def _read_raw(path):
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    # imdecode over np.fromfile also copes with non-ASCII paths, unlike cv2.imread on Windows
    return _decode_raw(np.fromfile(path, dtype=np.uint8), path)


def _decode_raw(data, name):
    """Encoded bytes (uint8 array) -> the image as OpenCV decodes it; ``name`` in the errors."""
    _check_ends(data[:HEAD_BYTES].tobytes(), data[-TAIL_BYTES:].tobytes(), name)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{name}: cannot decode image (expected PNG/JPEG/BMP/TIFF/WebP)")
    return image


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEAD_BYTES, TAIL_BYTES = 16, 1024


def _check_ends(head, tail, name):
    """An empty file, or a PNG / JPEG cut short, from its first and last bytes: one error line
    before libpng/libjpeg print their own complaint on stderr."""
    if not head:
        raise UserError(f"{name}: empty file, not an image")
    ending = _truncated(head, tail)
    if ending:
        raise UserError(f"{name}: cannot decode image ({ending})")


def _truncated(head, tail):
    """Why a PNG or JPEG file is cut short ("" if it is not, or is of another format): a PNG
    ends with its IEND chunk, a JPEG with the end-of-image marker (in the last KB: some writers
    append a few bytes after them). Decoding a cut file would make libpng print "PNG input buffer is incomplete" (and
    libjpeg "Premature end of JPEG file", with a half-grey image) straight to stderr."""
    if head[:8] == PNG_SIGNATURE and b"IEND" not in tail:
        return "truncated PNG: the file ends before its IEND chunk"
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        return "truncated JPEG: the file ends before its end-of-image marker"
    return ""


def _usual_format(head):
    """Whether the first bytes are those of PNG, JPEG, BMP, TIFF or WebP."""
    return (head.startswith((PNG_SIGNATURE, b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def image_file_problem(path):
    """What reading ``path`` would stop on ("" when nothing), found from its first and last
    bytes without decoding it: missing, empty, cut short, or not an image. Only a file of an
    unusual format is decoded to know. A file damaged inside still fails when it is read."""
    try:
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found")
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            f.seek(max(os.fstat(f.fileno()).st_size - TAIL_BYTES, 0))
            tail = f.read()
        _check_ends(head, tail, path)
        if not _usual_format(head):
            _read_raw(path)
    except UserError as err:
        return str(err)
    return ""


def _to_uint8(image):
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:  # 16-bit industrial cameras: keep the full range, scaled
        return (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    raise UserError(f"unsupported image pixel type {image.dtype}")


def read_rgb(path):
    """Any readable image as uint8 RGB HxWx3 (grayscale, RGBA and 16-bit are converted)."""
    return _as_rgb(_read_raw(path), path)


def decode_rgb(data, name):
    """``read_rgb`` for encoded bytes in memory (an upload); ``name`` in the errors."""
    return _as_rgb(_decode_raw(np.frombuffer(data, dtype=np.uint8), name), name)


def _as_rgb(image, path):
    try:
        image = _to_uint8(image)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise UserError(f"{path}: expected 1, 3 or 4 channels, found {channels}")


def write_png(path, image):
    """uint8 RGB HxWx3 or gray HxW -> a PNG file at ``path``, its folder created if need be.
    Encoded in memory and written with ndarray.tofile, so non-ASCII paths work (cv2.imwrite
    fails on them on Windows); OSError if OpenCV cannot encode the image."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    data.tofile(path)


def read_label_mask(path, expected_hw):
    """A ground-truth mask's values as an HxW array (0 = good; nonzero = defect, in MVTec LOCO
    the defect's id); must match its image's size."""
    mask = _read_raw(path)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.shape[:2] != tuple(expected_hw):
        raise UserError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{expected_hw[1]}x{expected_hw[0]} (width x height)")
    return mask


def read_mask(path, expected_hw):
    """A ground-truth mask as a {0,1} uint8 HxW array; must match its image's size."""
    return (read_label_mask(path, expected_hw) > 0).astype(np.uint8)


def image_hw(size):
    """A model input size as (height, width): a square side (256), "HxW" text ("384x512"), or
    a [height, width] pair (how train_config.json and deploy_config.json store it)."""
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"expected N or HxW (e.g. 256 or 384x512), got {size!r}")
        return int(parts[0]), int(parts[1])
    if isinstance(size, (list, tuple)):
        if len(size) != 2:
            raise ValueError(f"expected [height, width], got {size!r}")
        return int(size[0]), int(size[1])
    if isinstance(size, bool) or int(size) != size:
        raise ValueError(f"expected N or HxW (e.g. 256 or 384x512), got {size!r}")
    return int(size), int(size)


def size_text(size):
    """(h, w) -> "256" when square, else "HxW" (as --image_size takes it)."""
    h, w = image_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def aspect_note(photo_hw, size):
    """A log line when a photo of ``photo_hw`` (height, width) is squashed to the model input
    ``size`` (aspect ratios more than 2% apart), else None."""
    (h, w), (mh, mw) = photo_hw, image_hw(size)
    if abs(h * mw - w * mh) <= 0.02 * w * mh:
        return None
    keep = f"{mh}x{32 * max(1, round(mh * w / h / 32))}"
    return (f"photos of {w}x{h} px (width x height) are resized to the model input of {mw}x{mh} "
            f"px, which changes their aspect ratio, in training as in use; --image_size {keep} "
            "(height x width) keeps it, --tile_size keeps their pixels too (doc/large_images.md)")


def resize_rgb(image, size):
    """Resize to ``size`` (a side or (height, width), see image_hw): area averaging when
    shrinking (no aliasing), bilinear otherwise."""
    out_h, out_w = image_hw(size)
    h, w = image.shape[:2]
    if (h, w) == (out_h, out_w):
        return image
    shrinking = h > out_h or w > out_w
    return cv2.resize(image, (out_w, out_h),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def map_at_size(model_map, hw):
    """A model-size anomaly map upsampled (bilinear) to an image's (height, width): the one
    resize behind saved maps, overlays, the Predictor and full-resolution metrics. Bilinear
    weights are convex, so the result stays within the model map's [min, max]."""
    h, w = hw
    return cv2.resize(np.asarray(model_map, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask, size):
    out_h, out_w = image_hw(size)
    return cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)


def to_chw_float(image):
    """uint8 HxWx3 RGB -> float32 3xHxW in [0,1], the input every exported model takes."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def model_input(image, size):
    """uint8 RGB image of any size -> the float32 3 x H x W tensor every engine takes."""
    return to_chw_float(resize_rgb(image, size))
