"""A request's image bytes -> RGB array, refusing what would be too large before decoding it."""
import io
import re
import warnings

from adkit.core.errors import UserError
from adkit.core.image_io import decode_rgb


class TooLarge(UserError):
    """The request or its image exceeds a limit (HTTP 413)."""


def image_size_from_header(data, name, max_pixels):
    """(width, height) the file's header declares, read by Pillow without decoding the pixels
    (so a small PNG that declares 30000x30000 costs nothing). UserError if no image format is
    recognised."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its decompression-bomb warning: --max_pixels decides
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError as err:  # over twice Pillow's own limit
            declared = re.search(r"(\d+) pixels", str(err))
            raise TooLarge(f"{name}: {declared.group(1) if declared else 'too many'} pixels declared, "
                           f"more than the limit of {max_pixels} (--max_pixels)") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise UserError(f"{name}: not an image (expected PNG/JPEG/BMP/TIFF/WebP)") from None


def decode_request_image(data, name, max_bytes, max_pixels):
    """Bytes of one uploaded image -> uint8 RGB HxWx3. TooLarge beyond ``max_bytes`` or
    ``max_pixels`` (width x height from the header), UserError for empty, unknown or cut
    files; both name ``name`` and what was expected."""
    if not data:
        raise UserError(f"{name}: empty, no image bytes")
    if len(data) > max_bytes:
        raise TooLarge(f"{name}: {len(data)} bytes, more than the limit of {max_bytes} (--max_bytes)")
    width, height = image_size_from_header(data, name, max_pixels)
    if width * height > max_pixels:
        raise TooLarge(f"{name}: {width}x{height} pixels, more than the limit of {max_pixels} "
                       "(--max_pixels)")
    return decode_rgb(data, name)
