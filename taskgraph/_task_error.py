"""Errors that cross processes: the base of every taskgraph error, and a task's
error carried to its caller.

An error is made in one process (a worker, the scheduler) and raised in
another, so each must survive ``pickle`` and ``cloudpickle`` without its
``__init__`` running again: ``TaskgraphError`` pickles its finished message
and attributes. ``TaskError`` wraps what a task raised: made by
``TaskError.from_exception``, it is also an instance of a class made on the
fly (once per cause class) that subclasses both ``TaskError`` and the cause's
class, so ``except ValueError`` in the caller catches a ``ValueError`` raised
in a worker; it carries the remote traceback, from the user's first frame.

``taskgraph.exceptions`` is where users import these from (both classes say
so in their ``__module__``); the tree of every error is drawn there.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import types
from collections.abc import Mapping
from typing import Any, cast

PUBLIC_MODULE = "taskgraph.exceptions"  # where users import the errors from

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes written in Python


def _bare_instance(cls: type[BaseException]) -> Any:
    """An instance of ``cls`` made without running any ``__init__`` or Python ``__new__``.

    The ``__new__`` used is that of the nearest built-in base, which is the only
    one CPython accepts for an exception subclass (``OSError`` subclasses may not
    be made with ``BaseException.__new__``).
    """
    for base in cls.__mro__:
        if not base.__flags__ & _HEAPTYPE:
            return base.__new__(cls)  # type: ignore[call-overload]
    raise TypeError(f"{cls!r} has no built-in base")  # unreachable: object is built in


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    err = _bare_instance(cls)
    err.args = args
    if state:
        err.__setstate__(state)
    return err


class _Cause:
    """Pickles a task's exception so that unpickling it does not call its ``__init__``.

    The default pickling of an exception calls ``cls(*args)`` again, which fails
    for the many user classes whose ``__init__`` takes something other than the
    message. Classes that define their own pickling keep it.
    """

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        cls = type(self.exc)
        if cls.__reduce__ is not BaseException.__reduce__ or cls.__reduce_ex__ is not (
            object.__reduce_ex__
        ):
            return (_identity, (self.exc,))
        return (_rebuild, (cls, self.exc.args, dict(getattr(self.exc, "__dict__", {}))))


def _message_of(exc: BaseException) -> str:
    """``str(exc)``, or what went wrong making it: a user's ``__str__`` may raise."""
    try:
        return str(exc)
    except Exception as failed:
        return f"<its __str__ raised {type(failed).__name__}: {failed}>"


def _identity(value: Any) -> Any:
    return value


class TaskgraphError(Exception):
    """Base of every error taskgraph raises on purpose."""

    __module__ = PUBLIC_MODULE

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the finished message and attributes rather than by calling
        # __init__ again, so subclasses may take whatever arguments read best.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


# -- a task raised -------------------------------------------------------------


def _class_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# Our packages: taskgraph.worker and taskgraph.scheduler may live beside
# taskgraph, not inside it (pyproject.toml's package-dir).
_OWN_PACKAGES = ("taskgraph", "taskgraph.worker", "taskgraph.scheduler")


def _own_dirs() -> tuple[str, ...]:
    dirs = []
    for name in _OWN_PACKAGES:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            dirs.append(os.path.dirname(os.path.abspath(file)) + os.sep)
    return tuple(dirs)


def _from_users_frame(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback from its first frame outside taskgraph (an executor's call
    of the task, its generator loop): a user's traceback starts at their code.
    All of it, when no frame is the user's (the error is taskgraph's own)."""
    own = _own_dirs()
    start = tb
    while start is not None and os.path.abspath(start.tb_frame.f_code.co_filename).startswith(own):
        start = start.tb_next
    return tb if start is None else start


class TaskError(TaskgraphError):
    """A task raised an exception; ``cause`` is that exception if it could be pickled.

    ``remote_traceback`` is the traceback text formatted in the process that ran
    the task and ``pid`` that process's id.
    """

    task_name: str
    cause: BaseException | None
    cause_class_name: str
    cause_message: str
    remote_traceback: str
    pid: int

    __module__ = PUBLIC_MODULE

    def __init__(
        self,
        task_name: str = "",
        cause: BaseException | None = None,
        *,
        cause_class_name: str = "",
        cause_message: str = "",
        remote_traceback: str = "",
        pid: int | None = None,
    ) -> None:
        # No super().__init__(): in a dual class the next __init__ in the MRO is
        # the cause's own, which must not be called with our arguments.
        self.task_name = task_name
        self.cause = cause
        self.cause_class_name = cause_class_name or (
            _class_name(type(cause)) if cause is not None else "Exception"
        )
        self.cause_message = cause_message or (_message_of(cause) if cause is not None else "")
        self.remote_traceback = remote_traceback
        self.pid = os.getpid() if pid is None else pid
        self.args = cause.args if cause is not None else (self.cause_message,)

    @classmethod
    def from_exception(cls, exc: BaseException, task_name: str) -> TaskError:
        """Wrap ``exc``, raised by task ``task_name`` in this process.

        The result is also an instance of ``type(exc)`` when that class can be
        subclassed; otherwise it is a plain ``TaskError``. A ``TaskError`` passed
        in (one propagated from a dependency) is returned unchanged.
        """
        if isinstance(exc, TaskError):
            return exc
        return _make_task_error(
            task_name=task_name,
            cause=exc,
            cause_class_name=_class_name(type(exc)),
            cause_message=_message_of(exc),
            remote_traceback="".join(
                traceback.format_exception(type(exc), exc, _from_users_frame(exc.__traceback__))
            ),
            pid=os.getpid(),
        )

    def __repr__(self) -> str:
        # Not the cause's own: a user's __repr__ may raise.
        return f"{type(self).__name__}({self.task_name!r}, {self.cause_message!r})"

    def __str__(self) -> str:
        head = f"Task {self.task_name!r} raised {self.cause_class_name} in process {self.pid}"
        last = f"{self.cause_class_name}: {self.cause_message}"
        if not self.remote_traceback:
            return f"{head}.\n\n{last}"
        body = "\n".join("  " + line for line in self.remote_traceback.rstrip().splitlines())
        return f"{head}; its traceback there:\n{body}\n\n{last}"

    def __reduce__(self) -> tuple[Any, ...]:
        fields = ("task_name", "cause", "cause_class_name", "cause_message", "remote_traceback")
        state = {k: v for k, v in self.__dict__.items() if k not in (*fields, "pid")}
        return (
            _rebuild_task_error,
            (
                None if self.cause is None else _Cause(self.cause),
                self.task_name,
                self.remote_traceback,
                self.pid,
                self.cause_class_name,
                self.cause_message,
                type(self) is not TaskError,
                state,
            ),
        )

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # A cause class may define __reduce_ex__, which pickle would prefer to
        # our __reduce__; this keeps the dual class on our path.
        return self.__reduce__()


_dual_classes: dict[type[BaseException], type[TaskError] | None] = {}
_dual_classes_lock = threading.Lock()


def _dual_class(cause_cls: type[BaseException]) -> type[TaskError] | None:
    """``TaskError(<cause_cls>)``, made once per cause class; None if it cannot be made."""
    try:
        return _dual_classes[cause_cls]
    except KeyError:
        pass
    with _dual_classes_lock:
        if cause_cls in _dual_classes:
            return _dual_classes[cause_cls]
        dual: type[TaskError] | None = None
        # Non-Exception causes (KeyboardInterrupt, SystemExit) stay plain TaskErrors:
        # a caller's process should not act as if it was itself interrupted.
        if issubclass(cause_cls, Exception):
            name = f"TaskError({cause_cls.__name__})"
            try:
                made = type(name, (TaskError, cause_cls), {"__module__": PUBLIC_MODULE})
                made.__qualname__ = name
                _bare_instance(made)  # some layouts only fail at instance time
                dual = cast("type[TaskError]", made)
            except Exception:
                dual = None
        _dual_classes[cause_cls] = dual
        return dual


def _make_task_error(
    *,
    task_name: str,
    cause: BaseException | None,
    cause_class_name: str,
    cause_message: str,
    remote_traceback: str,
    pid: int,
    dual: bool = True,
) -> TaskError:
    dual_cls = _dual_class(type(cause)) if dual and cause is not None else None
    err: TaskError | None = None
    if dual_cls is not None:
        try:
            err = cast(TaskError, _bare_instance(dual_cls))
            # Keep the cause's own attributes (e.g. ``errno`` set by its __init__)
            # reachable from the caller's ``except CauseClass as e`` block.
            err.__dict__.update(getattr(cause, "__dict__", {}))
            if isinstance(cause, OSError):  # these live in C slots, not __dict__
                for slot in ("errno", "strerror", "filename", "filename2"):
                    setattr(err, slot, getattr(cause, slot))
        except Exception:
            err = None
    if err is None:
        err = _bare_instance(TaskError)
    TaskError.__init__(
        err,
        task_name,
        cause,
        cause_class_name=cause_class_name,
        cause_message=cause_message,
        remote_traceback=remote_traceback,
        pid=pid,
    )
    return err


def _rebuild_task_error(
    cause: BaseException | None,
    task_name: str,
    remote_traceback: str,
    pid: int,
    cause_class_name: str,
    cause_message: str = "",
    dual: bool = True,
    state: Mapping[str, Any] | None = None,
) -> TaskError:
    err = _make_task_error(
        task_name=task_name,
        cause=cause,
        cause_class_name=cause_class_name,
        cause_message=cause_message,
        remote_traceback=remote_traceback,
        pid=pid,
        dual=dual,
    )
    err.__dict__.update(state or {})
    return err
