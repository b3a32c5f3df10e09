"""Write a file only its owner can read (mode 0600): secrets, password files, auth configs."""

from __future__ import annotations

import os


def write_private(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, creating its folder if missing.

    The file is created 0600, so the text is never readable by others, not even for a moment;
    an existing file keeps its inode and is set to 0600 too (``os.open``'s mode applies only to a
    new file).
    """
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
