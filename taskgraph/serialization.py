"""How values, code and errors cross process boundaries.

Code goes by cloudpickle under one rule: whatever a worker cannot import is
pickled by value. That is ``__main__``, notebooks, test modules and local
packages that are not installed; installed packages, the standard library and
taskgraph itself go by reference. Data goes by pickle protocol 5 (through
cloudpickle, so lambdas and local classes inside data work), either in one
piece or as a small header plus raw buffers that another module lays into
shared memory without copying them into the pickle::

    value ──dumps_oob──▶ header + [PickleBuffer, ...] + [ref id, ...]
    value ◀───loads───── header,  [buffer, ...]    arrays come back as views

Arrow tables and record batches travel as one buffer in Arrow IPC stream form,
so a reader's columns are views of that buffer, whatever the table's layout.

Object refs found inside a value report themselves through ``note_ref`` while
being pickled, so the caller learns which objects a value depends on. A
failure to pickle becomes a ``SerializationError`` that names what failed.

This module knows nothing of sockets, shared memory or the scheduler.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import sysconfig
import threading
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle

from taskgraph.exceptions import SerializationError, TaskError

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "dumps",
    "dumps_error",
    "dumps_function",
    "dumps_oob",
    "function_id",
    "loads",
    "loads_error",
    "loads_function",
    "note_ref",
    "serialized_size",
]

PROTOCOL = 5

# -- what a worker can import --------------------------------------------------

_ALWAYS_BY_REFERENCE = "taskgraph"
_classified: set[str] = set()
_classify_lock = threading.Lock()
_installed_dirs: tuple[str, ...] | None = None


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _installed_roots() -> tuple[str, ...]:
    """Directories whose modules every worker has: the stdlib and site-packages."""
    global _installed_dirs
    if _installed_dirs is None:
        keys = ("stdlib", "platstdlib", "purelib", "platlib")
        base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
        schemes = (sysconfig.get_paths(), sysconfig.get_paths(vars=base))
        dirs = {_norm(paths[k]) for paths in schemes for k in keys if k in paths}
        _installed_dirs = tuple(sorted(dirs))
    return _installed_dirs


def _is_installed(module: types.ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    if getattr(spec, "origin", None) in ("built-in", "frozen"):
        return True
    file = getattr(module, "__file__", None)
    if not file:
        return True  # built in, namespace package or made in memory: nothing to ship
    path = _norm(file)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return any(path.startswith(root + os.sep) for root in _installed_roots())


def _register_local_modules() -> None:
    """Have cloudpickle pickle by value every imported module a worker cannot import.

    Cheap to call often: each module name is looked at once.
    """
    global _modules_seen
    if len(sys.modules) == _modules_seen:
        return  # nothing imported since the last look (the hot path of every .remote())
    new = sys.modules.keys() - _classified
    _modules_seen = len(sys.modules)
    if not new:
        return
    with _classify_lock:
        for name in new:
            _classified.add(name)
            module = sys.modules.get(name)
            top = name.partition(".")[0]
            if (
                not isinstance(module, types.ModuleType)
                or name == "__main__"  # cloudpickle already pickles __main__ by value
                or top == _ALWAYS_BY_REFERENCE
                or _is_installed(module)
            ):
                continue
            # A whole local package travels by value, so a function may call its siblings.
            target = sys.modules.get(top)
            if not isinstance(target, types.ModuleType):
                target = module
            try:
                cloudpickle.register_pickle_by_value(target)
            except Exception:
                pass  # a module that refuses registration goes by reference, as before


# -- object refs inside values -------------------------------------------------

_local = threading.local()
_modules_seen = 0


def note_ref(oid: bytes) -> bool:
    """Record that an object ref with id ``oid`` is being pickled.

    Called by ``ObjectRef.__reduce__``. Returns False outside ``dumps``/
    ``dumps_oob``: the user is pickling the ref themselves (out of band).
    """
    stack: list[list[bytes]] | None = getattr(_local, "stack", None)
    if stack:
        stack[-1].append(oid)
        return True
    return False


_PLAIN = {int, float, str, bytes, bool, type(None), complex}


def register_plain_type(kind: type) -> None:
    """Declare a type whose instances the C pickler handles alone (its reduce is importable)."""
    _PLAIN.add(kind)


def is_plain(value: Any, depth: int = 0) -> bool:
    """Built-in scalars and small containers of them: the C pickler handles these alone."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if depth > 2:
        return False
    if kind is tuple or kind is list:
        return len(value) <= 64 and all(is_plain(v, depth + 1) for v in value)
    if kind is dict:
        return len(value) <= 64 and all(
            type(k) in _PLAIN and is_plain(v, depth + 1) for k, v in value.items()
        )
    return False


def _pickle(
    value: Any, what: str, buffer_callback: Any = None, plain: bool | None = None
) -> tuple[bytes, list[bytes]]:
    stack: list[list[bytes]] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    found: list[bytes] = []
    stack.append(found)
    try:
        if plain is None:
            plain = buffer_callback is None and is_plain(value)
        if plain:
            # No code and no user classes inside: the C pickler is several times faster.
            data = pickle.dumps(value, protocol=PROTOCOL)
        else:
            _register_local_modules()
            with io.BytesIO() as file:
                _Pickler(file, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(value)
                data = file.getvalue()
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(what, str(exc) or type(exc).__name__) from exc
    finally:
        stack.pop()
    return data, list(dict.fromkeys(found))


# -- arrow tables ----------------------------------------------------------------


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, plus Arrow tables and record batches as one IPC buffer.

    pyarrow's own pickling yields a buffer per column buffer and rebuilds
    every array in Python; one IPC stream is a single out-of-band buffer that
    Arrow reads back with its columns as views of it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only a process that already imported pyarrow can hold a table; the
        # others must not pay pyarrow's import to find that out.
        pa = sys.modules.get("pyarrow")
        table = getattr(pa, "Table", None)
        batch = getattr(pa, "RecordBatch", None)
        self._arrow_types: tuple[type, ...] = (
            (table, batch) if isinstance(table, type) and isinstance(batch, type) else ()
        )

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in self._arrow_types and not _has_extension_type(obj.schema):
            return _reduce_arrow(obj)
        return super().reducer_override(obj)


def _has_extension_type(schema: Any) -> bool:
    # An extension type reads back as its storage type in a process that has
    # not registered it; pyarrow's own pickling carries the type with it.
    import pyarrow as pa

    def has(kind: Any) -> bool:
        if isinstance(kind, pa.BaseExtensionType):
            return True
        if isinstance(kind, pa.DictionaryType):
            return has(kind.value_type)
        return any(has(kind.field(i).type) for i in range(kind.num_fields))

    return any(has(field.type) for field in schema)


def _reduce_arrow(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    import pyarrow as pa

    # The stream is written into private memory: one copy of the table while
    # it is pickled, which the store then copies into shared memory.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, obj.schema) as writer:
        writer.write(obj)
    # Read-only, since tables are immutable: in band it then loads as bytes.
    stream = pickle.PickleBuffer(memoryview(sink.getvalue()).toreadonly())
    rebuild = _table_from_ipc if isinstance(obj, pa.Table) else _batch_from_ipc
    return rebuild, (stream,)


def _table_from_ipc(stream: Buffer) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(stream)).read_all()


def _batch_from_ipc(stream: Buffer) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(stream)).read_next_batch()


# -- code ----------------------------------------------------------------------


def dumps_function(func: Any, what: str | None = None) -> bytes:
    """Pickle a function or class so that a worker can run it without importing its module."""
    if what is None:
        what = f"the function {getattr(func, '__qualname__', type(func).__name__)!r}"
    # cloudpickle blanks file names of code pickled by value; carry the real
    # one so remote tracebacks point at the user's file (a wrapper names the
    # function it runs in __taskgraph_code__).
    code = getattr(getattr(func, "__taskgraph_code__", func), "__code__", None)
    filename = code.co_filename if isinstance(code, types.CodeType) else ""
    return _pickle((func, filename), what)[0]


def loads_function(payload: Buffer, what: str = "a function") -> Any:
    func, filename = loads(payload, what=what)
    target = getattr(func, "__taskgraph_code__", func)
    code = getattr(target, "__code__", None)
    if filename and isinstance(code, types.CodeType) and code.co_filename == "<dynamic-code>":
        target.__code__ = _with_filename(code, filename)
    return func


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _with_filename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def function_id(payload: Buffer) -> bytes:
    """A 16-byte content hash of a pickled function: equal code, equal id."""
    return hashlib.blake2b(payload, digest_size=16).digest()


# -- data ----------------------------------------------------------------------


def dumps(
    value: Any, what: str = "a value", plain: bool | None = None
) -> tuple[bytes, list[bytes]]:
    """Pickle ``value`` in one piece; also return the ids of object refs inside it.

    ``what`` names the value in errors, e.g. "the argument 'x' of task 'f'".
    ``plain``: whether ``is_plain(value)``, when the caller already asked.
    """
    return _pickle(value, what, plain=plain)


def dumps_oob(
    value: Any, what: str = "a value"
) -> tuple[bytes, list[pickle.PickleBuffer], list[bytes]]:
    """Pickle ``value`` as a header plus its large buffers, which are not copied.

    Returns the header, the out-of-band buffers (numpy arrays, pyarrow buffers,
    bytearrays) in the order ``loads`` wants them, and the ids of object refs
    inside the value.
    """
    buffers: list[pickle.PickleBuffer] = []
    header, refs = _pickle(value, what, buffer_callback=buffers.append)
    return header, buffers, refs


def loads(data: Buffer, buffers: Sequence[Buffer] = (), what: str = "a value") -> Any:
    """Unpickle what ``dumps`` or ``dumps_oob`` made.

    Values are rebuilt on top of ``buffers`` without copying: an array loaded
    from a read-only buffer is a read-only view of it.
    """
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise SerializationError(what, reason, deserializing=True) from exc


def serialized_size(header: Buffer, buffers: Sequence[Buffer]) -> int:
    """Bytes in the header and buffers together, without any framing."""
    return memoryview(header).nbytes + sum(memoryview(b).nbytes for b in buffers)


# -- errors ----------------------------------------------------------------------


def dumps_error(exc: BaseException, task_name: str) -> bytes:
    """Pickle the exception task ``task_name`` raised, as a ``TaskError``.

    Call it in the process where the task raised, so the traceback is captured
    there. If the exception cannot be pickled, or its pickle cannot be loaded
    back, its class name, message and traceback text still travel, in a
    ``TaskError`` whose ``cause`` is None.
    """
    err = TaskError.from_exception(exc, task_name)
    _register_local_modules()
    try:
        payload = cloudpickle.dumps(err, protocol=PROTOCOL)
        # A custom __reduce__ may pickle fine and still fail to unpickle; finding
        # that out here, on a rare path, beats the caller getting no error at all.
        pickle.loads(payload)
        return payload
    except Exception as pickling_failure:
        text_only = TaskError(
            err.task_name,
            None,
            cause_class_name=err.cause_class_name,
            cause_message=err.cause_message,
            remote_traceback=err.remote_traceback,
            pid=err.pid,
        )
        text_only.add_note(
            f"The {err.cause_class_name} itself could not be pickled ({pickling_failure}), "
            "so only its text came back; catch it as TaskError."
        )
        return cloudpickle.dumps(text_only, protocol=PROTOCOL)


def loads_error(payload: Buffer) -> BaseException:
    """Unpickle an error made by ``dumps_error`` (or any pickled exception)."""
    what = "the error raised by a task"
    err = loads(payload, what=what)
    if not isinstance(err, BaseException):
        raise SerializationError(
            what, f"expected an exception, got {type(err).__name__}", deserializing=True
        )
    return err
