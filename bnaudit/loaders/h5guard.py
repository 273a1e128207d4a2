"""Refuse, before a byte is read, every HDF5 feature Keras never writes.

A model file is hostile input. HDF5 can make a dataset's bytes live somewhere else:
*external storage* (raw bytes in any file the process can read, at any offset),
*external links* (an object in another HDF5 file), *soft links* and *virtual
datasets* (a view over other datasets, possibly of itself: libhdf5 then grows
without bound and crashes). Any of them turns "audit this model" into "read and
report this local file". Keras (``saving_lib``'s ``H5IOStore`` and the legacy
``hdf5_format`` writer) only ever creates groups by hard link and plain datasets
with contiguous (or, for tiny ones, compact) layout and no filters, so anything
else is refused with a :class:`~bnaudit.loaders.LoadError` naming what was found.

Declared sizes are checked against the bytes the file really stores before h5py
allocates: a 10 KB file cannot make bnaudit read (and keep) 128 MB per vector, and
a string attribute cannot claim more bytes than the file holds.

Low-level calls used: ``links.exists``/``links.get_info`` (the link itself, not its
target) and ``h5o.open``, the dataset creation property list (``get_layout``,
``get_external_count``, ``get_nfilters``), ``DatasetID.get_storage_size`` and
``get_offset``; ``AttrID.get_type``/``get_space`` for attributes (h5py's ``h5l``,
``h5o``, ``h5d``, ``h5p``, ``h5a`` modules, which wrap the HDF5 C API functions of the
same names). The BN vectors of a large model are thousands of such calls, so the readers
work on the low-level ids and never build h5py's high-level objects for them; once a
contiguous vector's offset and size are checked, its bytes are read there directly.
"""

from __future__ import annotations

import math
from typing import Callable

import h5py
import numpy as np

from . import LoadError

#: Dataset layouts Keras's writers produce (h5py's default, and compact for tiny data).
KERAS_LAYOUTS = {h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.COMPACT: "compact"}
_LAYOUT_NAMES = {h5py.h5d.CHUNKED: "chunked", h5py.h5d.VIRTUAL: "virtual"}
#: A ``weight_names`` list (a layer's, the optimizer's): a few names per variable (HDF5 caps
#: an attribute at 64 KiB in the compact form; dense attribute storage allows more).
MAX_WEIGHT_NAMES_BYTES = 16 << 20
_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}


def get_object(parent: h5py.Group, path: str, where: str) -> "h5py.Group | h5py.Dataset | h5py.Datatype | None":
    """The object at ``path`` below ``parent``, following hard links only (None if absent),
    as the high-level object ``Group[name]`` would give: :func:`open_object`, wrapped.

    Raises:
        LoadError: as :func:`open_object`.
    """
    found = open_object(parent.id, path, where)
    if found is None or found is parent.id:
        return None if found is None else parent
    return _wrapped(found)


def open_object(parent: h5py.h5g.GroupID, path: str, where: str) -> "h5py.h5o.ObjectID | None":
    """The low-level object at ``path`` below ``parent``, following hard links only (None if absent).

    Each step is looked up as a link first, so a soft or external link is refused
    without being followed (following an external link opens another file). The steps
    use h5py's low-level ``links.exists``/``links.get_info`` and ``h5o.open`` (the
    ``H5Lexists``, ``H5Lget_info`` and ``H5Oopen`` calls of the C API): the high-level
    ``Group.get(getlink=True)`` and ``Group[name]`` do the same, and wrapping each step
    in a high-level object (a ``Dataset`` fetches its creation property list and filters
    as it is made) cost more than the libhdf5 calls themselves. Callers that read many
    objects below one group open the group once and pass its id as ``parent``.

    Raises:
        LoadError: a step is a soft, external or user-defined link, or the file's
            link table cannot be read.
    """
    current: object = parent
    for part in (p for p in path.split("/") if p):
        if not isinstance(current, h5py.h5g.GroupID):  # a FileID is one too (its root group)
            return None
        name = part.encode("utf8")
        try:
            if not current.links.exists(name):  # type: ignore[attr-defined]
                return None
            kind = current.links.get_info(name).type  # type: ignore[attr-defined]
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise LoadError(f"{where}: the HDF5 link table is corrupt ({first_line(exc)})", _RESAVE) from None
        if kind != h5py.h5l.TYPE_HARD:
            raise LoadError(f"{where}: {part!r} is {_LINK_KINDS.get(kind, 'a user-defined link')}, which Keras never writes (it can point at another file)", _HOSTILE)
        try:
            current = h5py.h5o.open(current, name)
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            raise LoadError(f"{where}: {part!r} cannot be opened ({first_line(exc)})", _RESAVE) from None
    return current  # type: ignore[return-value]


def refuse_links(h5: h5py.File, where: str) -> None:
    """Refuse a file holding any link but a hard link, anywhere: after this, paths in it
    can be opened directly, with the guarantee :func:`get_object` gives step by step.

    One walk of the whole link table in libhdf5 (``H5Lvisit``, which enters a group
    reached twice only once): for a ResNet50's 676 links it costs what a dozen
    :func:`get_object` calls do. Meant for a file that is read through everywhere, as
    the copy ``bnaudit fix`` rewrites.

    Raises:
        LoadError: naming the first soft, external or user-defined link, or saying that
            the link table cannot be read.
    """
    try:
        found = h5.id.links.visit(lambda name, info: (name, info.type) if info.type != h5py.h5l.TYPE_HARD else None, info=True)
    except (KeyError, OSError, RuntimeError, ValueError) as exc:
        raise LoadError(f"{where}: the HDF5 link table is corrupt ({first_line(exc)})", _RESAVE) from None
    if found:
        name, kind = found
        text = _LINK_KINDS.get(kind, "a user-defined link")
        shown = name.decode("utf8", "replace") if isinstance(name, bytes) else str(name)
        raise LoadError(f"{where}: {shown!r} is {text}, which Keras never writes (it can point at another file)", _HOSTILE)


def _wrapped(obj: object) -> "h5py.Group | h5py.Dataset | h5py.Datatype":
    """A low-level object as the high-level one ``Group[name]`` would give (read-only datasets)."""
    if isinstance(obj, h5py.h5g.GroupID):
        return h5py.Group(obj)
    if isinstance(obj, h5py.h5d.DatasetID):
        return h5py.Dataset(obj, readonly=True)
    if isinstance(obj, h5py.h5t.TypeID):
        return h5py.Datatype(obj)
    raise TypeError(f"unknown object type {type(obj).__name__}")


#: Reads ``size`` bytes at byte ``offset`` of an HDF5 file as libhdf5 addresses it (a
#: ``.keras`` zip member's own offsets): ``os.pread`` on the file, or on the zip at the
#: member's start (:meth:`bnaudit.loaders.weights.FileWindow.read_at`).
RawReader = Callable[[int, int], bytes]


def check_dataset(
    dataset: "h5py.Dataset | h5py.h5d.DatasetID", where: str, max_elements: int, file_size: int | None = None
) -> "tuple[h5py.h5s.SpaceID, h5py.h5t.TypeID, int | None]":
    """Refuse a dataset Keras could not have written, or one whose bytes are not in the file;
    return its dataspace, stored type and the byte offset of its data in the file (None
    for a compact or empty dataset) as checked: what a read needs.

    Checked, in this order and without reading any data: layout (contiguous or compact),
    no external storage, no filters, a numeric element type of at most 8 bytes, at most
    ``max_elements`` elements, and storage that holds exactly the declared bytes inside
    the file (a dataset declared but never written reads as fill values, from nothing).
    ``dataset`` is a high-level dataset or its low-level id; ``file_size`` (bytes, the
    file's ``get_filesize()``) may be given by a caller that checks many datasets of one
    file, else it is asked for here.

    Raises:
        LoadError: with what was found.
    """
    ident = dataset.id if isinstance(dataset, h5py.Dataset) else dataset
    try:
        plist = ident.get_create_plist()
        layout = plist.get_layout()
        if layout not in KERAS_LAYOUTS:
            name = _LAYOUT_NAMES.get(layout, f"layout {layout}")
            raise LoadError(f"{where} is a {name} dataset, which Keras never writes", _HOSTILE)
        if plist.get_external_count():
            raise LoadError(f"{where} keeps its bytes in an external file, which Keras never writes", _HOSTILE)
        if plist.get_nfilters():
            raise LoadError(f"{where} is filtered (compressed), which Keras never writes", _HOSTILE)
        dtype = ident.get_type()
        if dtype.get_class() not in (h5py.h5t.FLOAT, h5py.h5t.INTEGER) or dtype.get_size() > 8:
            raise LoadError(f"{where} holds {ident.dtype}, not numbers", _HOSTILE)
        space = ident.get_space()
        elements = int(space.get_simple_extent_npoints())
        if elements > max_elements:
            raise LoadError(f"{where} declares {elements} elements, more than its layer can hold", _HOSTILE)
        declared = elements * dtype.get_size()
        stored = int(ident.get_storage_size())
        if stored != declared:
            raise LoadError(f"{where} declares {declared} bytes but the file stores {stored}", _HOSTILE)
        offset = ident.get_offset() if layout == h5py.h5d.CONTIGUOUS and declared else None
        if offset is not None:
            if file_size is None:
                file_size = h5py.h5i.get_file_id(ident).get_filesize()
            if offset + declared > file_size:
                raise LoadError(f"{where} points past the end of the file", _RESAVE)
        return space, dtype, offset
    except LoadError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise LoadError(f"{where}: the HDF5 dataset header is corrupt ({first_line(exc)})", _RESAVE) from None


def read_dataset(
    dataset: object, where: str, max_elements: int, file_size: int | None = None, read_at: RawReader | None = None
) -> np.ndarray:
    """The dataset's values as float64, after :func:`check_dataset` (shape as stored).

    ``dataset`` is a high-level dataset or its low-level id (what :func:`open_object`
    gives); anything else is not an array. ``file_size``: as for :func:`check_dataset`.
    With ``read_at``, a contiguous dataset's bytes are read where the checks found them,
    in one call, and taken as its stored type: what ``DatasetID.read`` into that type
    does (no conversion), without libhdf5's dataspace and type-path set-up, which costs
    about eight times the read itself for a BN vector (0.12 ms against 0.014 ms through a
    zip member, measured on an EfficientNetB7's 652 vectors). Compact datasets (their
    bytes lie in the object header) are read by libhdf5.

    Raises:
        LoadError: the object is not a dataset, fails the checks, or cannot be read.
    """
    if isinstance(dataset, h5py.Dataset):
        dataset = dataset.id
    if not isinstance(dataset, h5py.h5d.DatasetID):
        raise LoadError(f"{where} is not an array in the weights file")
    space, stored_type, offset = check_dataset(dataset, where, max_elements, file_size)
    try:
        shape = space.shape
        if shape is None:
            raise TypeError("a null dataspace holds no values")
        if read_at is not None and offset is not None:
            declared = math.prod(shape) * stored_type.get_size()
            raw = read_at(offset, declared)
            if len(raw) != declared:
                raise OSError(f"the file ends {declared - len(raw)} bytes early")
            values = np.frombuffer(raw, dtype=stored_type.dtype).reshape(shape)
        else:
            # ``DatasetID.read`` into an array of the stored type: what ``dataset[()]``
            # does, without the selection machinery of h5py's high-level indexing.
            values = np.empty(shape, dtype=stored_type.dtype)
            if values.size:
                dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values, mtype=stored_type)
        return np.asarray(values, dtype=np.float64)
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise LoadError(f"{where} cannot be read ({first_line(exc)})", _RESAVE) from None


def read_text_attribute(obj: "h5py.Group | h5py.File", name: str, limit: int) -> "str | list[str] | None":
    """A string (or array of strings) attribute, decoded as UTF-8; None when absent.

    A fixed-length string's declared size is checked against ``limit`` and against the
    file's size before h5py allocates a buffer for it. A variable-length one (Keras 3's
    legacy writer) keeps its bytes in the file's global heap, whose object lengths
    libhdf5 checks against the heap collection it read; a decoded value over ``limit``
    is refused.

    Raises:
        LoadError: the attribute is not text, is larger than ``limit`` or the file, or
            cannot be read.
    """
    where = f"the {name!r} attribute"
    try:
        if not h5py.h5a.exists(obj.id, name.encode()):
            return None
        attr = h5py.h5a.open(obj.id, name.encode())
        kind = attr.get_type()
        points = int(attr.get_space().get_simple_extent_npoints())
        if kind.get_class() != h5py.h5t.STRING:
            if points == 0 or kind.get_class() in (h5py.h5t.FLOAT, h5py.h5t.INTEGER):
                return []  # Keras 3's legacy writer stores an empty list as an empty float array
            raise LoadError(f"{where} is not text", _HOSTILE)
        if not kind.is_variable_str():
            declared = points * kind.get_size()
            if declared > min(limit, obj.file.id.get_filesize()):
                raise LoadError(f"{where} declares {declared} bytes, more than the file or a model config can hold", _HOSTILE)
        value = obj.attrs[name]
        if kind.is_variable_str() and sum(len(v) for v in np.asarray(value, dtype=object).ravel()) > limit:
            raise LoadError(f"{where} holds more bytes than a model config can", _HOSTILE)
    except LoadError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, MemoryError) as exc:
        raise LoadError(f"{where} is corrupt ({first_line(exc)})", _RESAVE) from None
    return _decode(value, where)


def _decode(value: object, where: str) -> "str | list[str]":
    try:
        if isinstance(value, (bytes, np.bytes_)):
            return bytes(value).decode("utf8")
        if isinstance(value, str):
            return value
        if isinstance(value, np.ndarray):
            return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in value.ravel().tolist()]
    except UnicodeDecodeError:
        raise LoadError(f"{where} is not UTF-8 text", _HOSTILE) from None
    raise LoadError(f"{where} is not text", _HOSTILE)


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message (h5py's span several), or its type."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_HOSTILE = "the file was not written by Keras as saved; do not trust it"
_RESAVE = "the file is damaged; save the model again"
