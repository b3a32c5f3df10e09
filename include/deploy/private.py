"""Write a file only its owner can read (mode 0600): secrets, password files, auth configs."""

from __future__ import annotations

import os
import secrets


def write_private(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, creating its folder if missing.

    A new file is written next to it (created 0600 and exclusively, never following a link), synced,
    and renamed over ``path``. So the text is never readable by others, not even for a moment; a
    descriptor opened on the old file while it was readable never sees the new text; a symlink at
    ``path`` is replaced, not written through; and a crash leaves the old file or the new one whole.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # O_CREAT's mode is already 0600 whatever the umask; say it anyway
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
