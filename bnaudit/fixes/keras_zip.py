"""The zip of a ``.keras`` copy: its weights taken out for editing, and the zip written back.

Keras 3 writes every member stored, uncompressed (``saving_lib._save_model_to_fileobj``
opens ``zipfile.ZipFile(fileobj, "w")``, whose default is ``ZIP_STORED``), and the copy
is written the same way. A stored member is read where it lies in the input
(:func:`~bnaudit.loaders.weights.open_member`): nothing is inflated or deflated, and
the only pass over a member's bytes besides the copy is the CRC-32 that zipfile
computes as it writes (the standard library has no public way to copy a member with
its old CRC). A member someone compressed is inflated once and written stored.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from ..loaders.weights import open_member

#: Bytes per read and write: large enough that Python's per-call cost vanishes next to
#: the copy (zipfile's own ``write`` moves 8 KiB at a time: 12,600 calls for a ResNet50).
CHUNK = 1 << 22


def extract(source: Path, name: str, target: Path) -> None:
    """Copy the member ``name`` of the zip at ``source`` into the new file ``target``."""
    with zipfile.ZipFile(source) as archive, open_member(str(source), archive, archive.getinfo(name)) as member, open(target, "wb") as out:
        shutil.copyfileobj(member, out, CHUNK)


def rewrite(source: Path, target: Path, replaced: dict[str, bytes | Path]) -> None:
    """Write the zip at ``source`` to ``target``, the members named in ``replaced`` taken
    from there (bytes, or a file's content), in the original order and names, stored.

    :raises OSError: when ``target`` cannot be written (the caller removes it).
    """
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as archive:
        for info in original.infolist():
            entry = zipfile.ZipInfo(info.filename, info.date_time)
            entry.external_attr = info.external_attr
            content = replaced.get(info.filename)
            if isinstance(content, bytes) or info.is_dir():
                archive.writestr(entry, content or b"")
                continue
            if content is None:
                reader, entry.file_size = open_member(str(source), original, info), info.file_size
            else:
                reader, entry.file_size = open(content, "rb"), content.stat().st_size
            with reader, archive.open(entry, "w") as out:  # zipfile turns zip64 on from file_size
                shutil.copyfileobj(reader, out, CHUNK)
