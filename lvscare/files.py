"""Reading the small files a user names (``--config``, certificates) without trusting them."""

from __future__ import annotations

import os
import stat

from lvscare.config import show
from lvscare.errors import UserError

MAX_CONFIG_BYTES = 1 << 20


def read_bytes(path: str, name: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """A small regular file, refused with one line when it is anything else: a FIFO or a device
    (which would hang or never end), or too large."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or "not a usable path"
        raise UserError(f"{name} {show(path, 300)}: {reason}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{name} {show(path, 300)}: not a regular file")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{name} {show(path, 300)}: larger than {limit >> 20} MiB")
    return data


def read_text_file(path: str, name: str, limit: int = MAX_CONFIG_BYTES) -> str:
    data = read_bytes(path, name, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{name} {show(path, 300)}: not UTF-8 text") from None
