"""The zip of a ``.keras`` copy, built where it will be moved into place.

Keras 3 writes every member stored, uncompressed (``saving_lib._save_model_to_fileobj``
opens ``zipfile.ZipFile(fileobj, "w")``, whose default is ``ZIP_STORED``), and the copy
is written the same way. Its weights are never extracted: the working file starts as
the weights member (its local header, then the bytes of the input's member, copied in
the kernel where the OS allows), h5py edits them there (:class:`~bnaudit.loaders.weights.FileWindow`),
and :meth:`WorkingZip.finish` then writes the member's CRC-32 and size into its header
and appends the other members and the central directory. So a fix writes the weights
once, and an unedited member keeps the CRC the input's central directory gives (no
pass over its bytes at all). The weights come first so that h5py can grow them; Keras
and bnaudit find members by name, not by position.

The standard library writes the other members and the central directory; the one thing
it lacks, a member whose bytes the caller put in place, is registered as
``ZipFile.mkdir`` registers a directory (the ``filelist`` and ``NameToInfo`` entries).
"""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path

from ..loaders.weights import FileWindow, open_member

#: Bytes per read and write: large enough that Python's per-call cost vanishes next to
#: the copy (zipfile's own ``write`` moves 8 KiB at a time: 12,600 calls for a ResNet50).
CHUNK = 1 << 22


class WorkingZip:
    """The ``.keras`` copy at ``path`` while a fix edits it; its member ``weights`` first.

    :param source: the input ``.keras`` (only read).
    :param path: the working file (created; on the output's filesystem).
    :param weights: the name of the weights member (``model.weights.h5``).
    """

    def __init__(self, source: Path, path: Path, weights: str) -> None:
        self.source, self.path = source, path
        with zipfile.ZipFile(source) as archive:
            self._members = archive.infolist()
            original = archive.getinfo(weights)
            self._weights = zipfile.ZipInfo(weights, original.date_time)
            self._weights.external_attr = original.external_attr
            self._weights.CRC = original.CRC  # right until the bytes are edited
            self._weights.header_offset = 0
            self._zip64 = original.file_size * 1.05 > zipfile.ZIP64_LIMIT  # as zipfile decides for a stream
            self._start = len(self._weights.FileHeader(self._zip64))  # the same length once sizes are known
            with open(path, "wb") as out, open_member(str(source), archive, original) as member:
                out.write(self._weights.FileHeader(self._zip64))
                if isinstance(member, FileWindow):
                    member.append_to(out)
                else:  # someone compressed it: inflated once
                    shutil.copyfileobj(member, out, CHUNK)
        self._edited = False

    def weights(self) -> FileWindow:
        """The weights member as a file to edit in place (h5py opens it ``r+``); close it before :meth:`finish`."""
        self._edited = True
        return FileWindow(str(self.path), self._start, os.path.getsize(self.path) - self._start, writable=True)

    def finish(self, replaced: dict[str, bytes]) -> None:
        """Complete the zip: the weights' header, then every other member of the input in
        its order (those named in ``replaced`` with the given bytes), then the central
        directory. :meth:`reopen` undoes the appending, for further edits."""
        size = os.path.getsize(self.path) - self._start
        if size * 1.05 > zipfile.ZIP64_LIMIT and not self._zip64:
            raise OSError(f"{self._weights.filename} grew past the zip's 2 GiB limit for a member without zip64")
        with open(self.path, "r+b") as out:
            if self._edited:
                self._weights.CRC = _crc32(out, self._start)
            self._weights.file_size = self._weights.compress_size = size
            out.seek(0)
            out.write(self._weights.FileHeader(self._zip64))
            out.seek(0, os.SEEK_END)
            with zipfile.ZipFile(self.source) as original, zipfile.ZipFile(out, "w") as archive:
                archive.filelist.append(self._weights)
                archive.NameToInfo[self._weights.filename] = self._weights
                for info in self._members:
                    if info.filename != self._weights.filename:
                        _append(archive, original, str(self.source), info, replaced.get(info.filename))

    def reopen(self) -> None:
        """Back to the weights member alone, after :meth:`finish`."""
        size = self._weights.file_size
        with open(self.path, "r+b") as out:
            out.truncate(self._start + size)


def _append(archive: zipfile.ZipFile, original: zipfile.ZipFile, source: str, info: zipfile.ZipInfo, content: bytes | None) -> None:
    """One member, stored: ``content``, or the input's bytes (read where they lie when stored)."""
    entry = zipfile.ZipInfo(info.filename, info.date_time)
    entry.external_attr = info.external_attr
    if content is not None or info.is_dir():
        archive.writestr(entry, content or b"")
        return
    entry.file_size = info.file_size  # zipfile turns zip64 on from it
    with open_member(source, original, info) as reader, archive.open(entry, "w") as out:
        shutil.copyfileobj(reader, out, CHUNK)


def _crc32(file, start: int) -> int:
    """CRC-32 of ``file`` from ``start`` to its end, as zip headers hold it."""
    file.seek(start)
    crc, buffer = 0, bytearray(CHUNK)
    view = memoryview(buffer)
    while read := file.readinto(buffer):
        crc = zlib.crc32(view[:read], crc)
    return crc
