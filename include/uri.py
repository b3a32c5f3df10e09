"""Object addresses: ``file://`` and ``s3://`` URIs, with no I/O and no imports of the project.

The leaf that :mod:`include.settings` (where things live) and :mod:`include.storage` (reading and
writing them) both build on, so neither has to import the other to spell a location.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, unquote, urlparse


def path_to_uri(path: str | Path) -> str:
    """``file://`` URI of a local path, keeping ``=`` readable (Hive-style partition keys)."""
    return "file://" + quote(str(Path(path).resolve()), safe="/=:@+,-_.~")


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith("s3://")


class UnsafePath(ValueError):
    """A path segment would leave its root (``..``): refused wherever a key is built."""


def join(base: str, *parts: str) -> str:
    """Join URI path segments with single slashes; a ``..`` (or ``.``) segment is refused.

    Keys are built from names that can come from outside (a spec's pipeline name, a month, an
    artifact's file name); none may climb out of the folder it is joined to. A segment is checked as
    the filesystem will read it: percent-decoded (``%2e%2e`` is ``..`` once :func:`local_path`
    decodes the URI) and with backslashes as separators.
    """
    out = base.rstrip("/")
    for part in parts:
        decoded, previous = str(part), None
        while decoded != previous:  # %252e%252e decodes twice
            previous, decoded = decoded, unquote(decoded)
        segments = decoded.replace("\\", "/").split("/")
        if any(seg in ("..", ".") for seg in segments):
            raise UnsafePath(
                f"path segment {part!r} would leave {out}: '..' and '.' are not allowed in a key; "
                "use a plain name"
            )
        out += "/" + str(part).strip("/")
    return out


def split_s3(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` URI."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str) -> Path:
    """The filesystem path of a ``file://`` URI or a plain path; ``ValueError`` for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    raise ValueError(f"{uri}: not a local path")
