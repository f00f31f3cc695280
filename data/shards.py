"""Reading and writing WebDataset tar shards with a fixed set of known keys.

Only the keys in :data:`KNOWN_KEYS` are ever read from a shard; every other member (``.pyd``,
``.pickle``, anything) is skipped by the tar reader without its bytes being read, and reported to the
``on_unknown`` callback. Values are raw bytes: nothing here decodes, and nothing ever unpickles.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from webdataset.tariterators import base_plus_ext, tar_file_iterator

# Video containers and raw streams (decord reads most; PyAV the rest: GIF, raw H.264/HEVC, ...).
VIDEO_KEYS: tuple[str, ...] = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "gif", "h264", "264", "hevc", "h265",
                               "265", "mpg", "mpeg", "ts", "flv", "3gp", "ogv", "wmv")
IMAGE_KEYS: tuple[str, ...] = ("png", "jpg", "jpeg")
KNOWN_KEYS: frozenset[str] = frozenset(VIDEO_KEYS + IMAGE_KEYS + ("json",))

# Errors a damaged or truncated tar file raises while being streamed.
SHARD_READ_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, OSError)


@dataclass
class RawSample:
    """One sample as stored: its key, the shard it came from and its known members' raw bytes."""

    key: str
    shard: str
    members: dict[str, bytes] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # suffixes of unknown members (never read)


def _split_name(fname: str) -> tuple[str | None, str | None]:
    prefix, suffix = base_plus_ext(fname)
    return prefix, (suffix.lower() if suffix is not None else None)


def iter_shard(path: str) -> Iterator[RawSample]:
    """Yield the samples of one tar shard in stored order, reading only the bytes of known keys.

    Members are grouped by key (consecutive members sharing a key form one sample, each key yielded
    once). Unknown members are skipped by the tar reader (their bytes are never read) and listed in
    ``RawSample.ignored``; a sample made only of unknown members is yielded with no members.
    Damaged tar data raises one of :data:`SHARD_READ_ERRORS` from this generator; a key holding the
    same known member twice raises ``ValueError`` naming the shard and the member.
    """
    skipped: list[tuple[str, str, bytes | None]] = []  # unknown members met since the last known one

    def select(fname: str) -> bool:
        prefix, suffix = _split_name(fname)
        if prefix is None or suffix is None:
            return False
        if suffix in KNOWN_KEYS:
            return True
        skipped.append((prefix, suffix, None))
        return False

    def reraise(exn: BaseException) -> bool:
        raise exn

    def members(stream: io.BufferedReader) -> Iterator[tuple[str, str, bytes | None]]:
        """(key, suffix, bytes or None for an unknown member) of every member, in tar order."""
        for f in tar_file_iterator(stream, handler=reraise, select_files=select):
            yield from skipped  # the unknown members stored before this known one
            skipped.clear()
            prefix, suffix = _split_name(str(f["fname"]))
            assert prefix is not None and suffix is not None  # select() lets only known keys through
            yield prefix, suffix, f["data"]
        yield from skipped

    current: RawSample | None = None
    with open(path, "rb") as stream:
        for key, suffix, data in members(stream):
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = RawSample(key=key, shard=path)
            if data is None:
                current.ignored.append(suffix)
            elif suffix in current.members:
                raise ValueError(f"{path}: sample {key!r} holds member .{suffix} twice")
            else:
                current.members[suffix] = data
    if current is not None:
        yield current


def iter_shard_keys(path: str) -> Iterator[str]:
    """Sample keys of a shard in stored order, from tar headers only (member bytes are not read)."""
    last: str | None = None
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg():
                continue
            prefix, _ = _split_name(info.name)
            if prefix is not None and prefix != last:
                last = prefix
                yield prefix


class ShardWriter:
    """Write samples into ``<out_dir>/<prefix>-NNNNNN.tar`` shards of at most ``shard_size`` samples.

    Each shard is written to a ``.tmp`` file and renamed when complete, so a crash never leaves a
    half-written shard under its final name. Members get fixed metadata (mtime 0, mode 0644).
    """

    def __init__(self, out_dir: str | os.PathLike[str], shard_size: int, prefix: str = "shard") -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.prefix = prefix
        self.shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def _open_next(self) -> None:
        final = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = final.with_name(final.name + ".tmp")
        self._tar = tarfile.open(self._tmp, mode="w", format=tarfile.USTAR_FORMAT)
        self.shards.append(str(final))
        self._count = 0

    def _close_current(self) -> None:
        if self._tar is None or self._tmp is None:
            return
        self._tar.close()
        os.replace(self._tmp, self.shards[-1])
        self._tar, self._tmp = None, None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample; ``key`` must not contain '.' or '/', member names must be known keys."""
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r}: must be non-empty without '.' or '/'")
        unknown = sorted(set(members) - KNOWN_KEYS)
        if unknown:
            raise ValueError(f"sample {key!r}: unknown member keys {unknown} (known: {sorted(KNOWN_KEYS)})")
        if self._tar is None or self._count >= self.shard_size:
            self._close_current()
            self._open_next()
        assert self._tar is not None
        for ext, data in members.items():
            info = tarfile.TarInfo(name=f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def close(self) -> list[str]:
        """Finish the last shard; returns all shard paths written."""
        self._close_current()
        return list(self.shards)

    def __enter__(self) -> ShardWriter:
        return self

    def abort(self) -> None:
        """Close and delete the shard being written (finished shards stay)."""
        if self._tar is not None:
            self._tar.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self.shards.pop()
        self._tar, self._tmp = None, None

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Finish the last shard, or on an exception discard it so no partial shard gets a final name."""
        if exc_type is None:
            self.close()
        else:
            self.abort()
