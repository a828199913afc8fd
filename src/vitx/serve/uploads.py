"""Images sent by clients, read safely: a limit on bytes, a limit on pixels read from the header before any
decoding (so a decompression bomb is refused before it inflates), and a one-line :class:`BadRequest` for anything
that is not a whole image of an allowed type. Nothing here touches the file system."""
from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

# the content types a client may send an image as, and the formats PIL must then find in the bytes
CONTENT_TYPES = {"image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff", "image/x-ms-bmp"}
FORMATS = {"PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "MPO"}


class BadRequest(Exception):
    """A request the client can fix: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_type(content_type: str | None) -> None:
    """Refuse an upload whose declared content type is not an image type vitx reads."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in CONTENT_TYPES:
        raise BadRequest(415, f"unsupported content type {kind or 'none'!r} for the image: send one of "
                              f"{', '.join(sorted(CONTENT_TYPES - {'image/x-ms-bmp'}))}")


def read_upload(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """``data`` decoded as an RGB image, or a :class:`BadRequest`: too many bytes (413), too many pixels by its header
    (413), not an image, a format not allowed, or truncated or corrupt (400)."""
    if len(data) > max_bytes:
        raise BadRequest(413, f"the image has more than {max_bytes:,} bytes (the server's limit)")
    if not data:
        raise BadRequest(400, "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadRequest(413, f"the image has {width}x{height} pixels, more than the server's limit of "
                                      f"{max_pixels:,} pixels")
            if image.format not in FORMATS:
                raise BadRequest(415, f"images in {image.format} format are not read here: send PNG, JPEG, GIF, BMP, "
                                      "WebP or TIFF")
            image.load()
            return image.convert("RGB")
    except BadRequest:
        raise
    except UnidentifiedImageError:
        raise BadRequest(400, "the upload is not an image that can be read (PNG, JPEG, GIF, BMP, WebP or TIFF)") \
            from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadRequest(413, f"the image is refused as a decompression bomb ({' '.join(str(err).split())})") \
            from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise BadRequest(400, f"the image is truncated or corrupt ({reason})") from None
