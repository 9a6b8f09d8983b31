"""The exception tree: hierarchy, messages, TaskError's dual classes, pickling."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskgraph import exceptions
from taskgraph.exceptions import (
    ActorDiedError,
    ActorError,
    AuthenticationError,
    ClusterConnectionError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectStoreFullError,
    OutOfMemoryError,
    ProtocolError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    TaskgraphError,
    TaskUnschedulableError,
    WorkerCrashedError,
)

PICKLERS = [pytest.param(pickle, id="pickle"), pytest.param(cloudpickle, id="cloudpickle")]


class TwoArgError(Exception):
    """A user's exception whose __init__ does not take a message."""

    def __init__(self, a: int, b: str) -> None:
        super().__init__(f"a={a}")
        self.a = a
        self.b = b


class NoSubclassesError(Exception):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("this class may not be subclassed")


def raised(exc: BaseException) -> BaseException:
    """``exc`` after a trip through raise, so it carries a traceback."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def task_error(exc: BaseException, task_name: str = "f") -> TaskError:
    return TaskError.from_exception(raised(exc), task_name)


def examples() -> list[Any]:
    return [
        pytest.param(TaskgraphError("something broke"), id="TaskgraphError"),
        pytest.param(task_error(ValueError("boom")), id="TaskError-dual"),
        pytest.param(task_error(TwoArgError(1, "x")), id="TaskError-dual-custom"),
        pytest.param(task_error(NoSubclassesError("no")), id="TaskError-plain"),
        pytest.param(TaskError("f", None, cause_class_name="X", pid=7), id="TaskError-no-cause"),
        pytest.param(GetTimeoutError(2.5, 3), id="GetTimeoutError"),
        pytest.param(TaskCancelledError("f", "ab12"), id="TaskCancelledError"),
        pytest.param(WorkerCrashedError(task_name="f", exit_code=-9), id="WorkerCrashedError"),
        pytest.param(ObjectLostError("ab12", "its worker left"), id="ObjectLostError"),
        pytest.param(
            ObjectReconstructionFailedError("ab12", "max_retries=0"),
            id="ObjectReconstructionFailedError",
        ),
        pytest.param(NodeDiedError("heartbeat lost", node="n1"), id="NodeDiedError"),
        pytest.param(ActorError("a1", "bad call"), id="ActorError"),
        pytest.param(ActorDiedError("a1", "killed"), id="ActorDiedError"),
        pytest.param(ObjectStoreFullError(10 << 20, 1 << 30, 2 << 30), id="ObjectStoreFullError"),
        pytest.param(
            OutOfMemoryError("f", 7 << 30, 8 << 30, node="n1", memory=5 << 30, task_id="ab"),
            id="OutOfMemoryError",
        ),
        pytest.param(TaskUnschedulableError("f", {"GPU": 2.0}), id="TaskUnschedulableError"),
        pytest.param(AuthenticationError("bad token", peer="10.0.0.1:9"), id="AuthenticationError"),
        pytest.param(ClusterConnectionError("the peer left"), id="ClusterConnectionError"),
        pytest.param(ProtocolError("truncated frame", peer="w1"), id="ProtocolError"),
        pytest.param(SerializationError("the value passed to put", "no"), id="SerializationError"),
    ]


def comparable(err: BaseException) -> tuple[Any, ...]:
    state = {k: v for k, v in vars(err).items() if k != "cause"}
    cause = getattr(err, "cause", None)
    cause_view = (type(cause).__name__, cause.args) if cause is not None else None
    return (type(err).__name__, str(err), err.args, state, cause_view)


def test_examples_cover_every_exported_class() -> None:
    covered = {type(p.values[0]) for p in examples()}
    covered |= {base for cls in covered for base in cls.__mro__}
    exported = {getattr(exceptions, name) for name in exceptions.__all__}
    assert exported <= covered
    assert all(issubclass(cls, TaskgraphError) for cls in exported)


@pytest.mark.parametrize("pickler", PICKLERS)
@pytest.mark.parametrize("err", examples())
def test_every_error_survives_pickling(pickler: Any, err: BaseException) -> None:
    back = pickler.loads(pickler.dumps(err))
    assert type(back) is type(err)
    assert comparable(back) == comparable(err)


def test_errors_pickled_here_unpickle_in_a_fresh_process() -> None:
    """A process that has imported nothing of taskgraph rebuilds each error from
    what its pickle names alone (the errors live in two modules; every class is
    named as ``taskgraph.exceptions`` has it)."""
    errs = [
        p.values[0]
        for p in examples()
        if not isinstance(getattr(p.values[0], "cause", None), TwoArgError | NoSubclassesError)
    ]
    child = (
        "import pickle, sys\n"
        "assert not any(m.startswith('taskgraph') for m in sys.modules)\n"
        "for err in pickle.loads(sys.stdin.buffer.read()):\n"
        "    print(type(err).__module__, type(err).__qualname__, repr(str(err)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        input=pickle.dumps(errs),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    expected = [f"taskgraph.exceptions {type(e).__qualname__} {str(e)!r}" for e in errs]
    assert done.stdout.decode().splitlines() == expected


@pytest.mark.parametrize(
    "err",
    [
        p
        for p in examples()
        if type(p.values[0]) is not TaskgraphError and not isinstance(p.values[0], TaskError)
    ],
)
def test_every_message_says_what_and_what_to_do(err: BaseException) -> None:
    sentences = [s for s in str(err).split(". ") if s]
    assert str(err)[:1].isupper() or str(err).startswith("get()")
    assert str(err).endswith(".")
    assert len(sentences) >= 2  # what happened, then what to do


def test_builtin_bases_let_ray_style_handlers_catch() -> None:
    assert isinstance(GetTimeoutError(1.0), TimeoutError)
    assert isinstance(SerializationError(), TypeError)
    assert isinstance(AuthenticationError(), ConnectionError)
    assert isinstance(ClusterConnectionError(), ConnectionError)
    assert isinstance(AuthenticationError(), ClusterConnectionError)
    assert isinstance(ActorDiedError(), ActorError)
    with pytest.raises(TimeoutError):
        raise GetTimeoutError(0.1, 1)


def test_dual_class_is_both_task_error_and_the_cause_class() -> None:
    err = task_error(ValueError("boom"), "my_task")
    assert isinstance(err, TaskError)
    assert isinstance(err, ValueError)
    assert type(err).__name__ == "TaskError(ValueError)"
    assert err.cause_class_name == "ValueError"
    assert err.args == ("boom",)
    with pytest.raises(ValueError, match="boom"):
        raise err


def test_str_shows_task_pid_traceback_then_message() -> None:
    err = task_error(ValueError("boom"), "my_task")
    text = str(err)
    assert "'my_task'" in text
    assert str(os.getpid()) in text
    assert "Traceback (most recent call last)" in text
    assert "in raised" in text  # the frame that raised, from the captured traceback
    assert text.rstrip().endswith("ValueError: boom")
    for line in err.remote_traceback.splitlines():
        assert line in text


def test_custom_init_signature_is_not_called_again() -> None:
    err = task_error(TwoArgError(1, "x"))
    assert isinstance(err, TwoArgError)
    assert err.a == 1
    assert err.b == "x"  # the cause's own attributes are reachable from the dual
    assert err.task_name == "f"
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, TaskError)
    assert isinstance(back, TwoArgError)
    assert back.b == "x"
    assert isinstance(back.cause, TwoArgError)
    assert back.cause.args == ("a=1",)


def test_os_error_attributes_are_kept() -> None:
    err = task_error(FileNotFoundError(errno.ENOENT, "missing", "/nope"))
    assert isinstance(err, FileNotFoundError)
    assert err.errno == errno.ENOENT
    assert err.filename == "/nope"


def test_dual_class_is_made_once_per_cause_class() -> None:
    first = task_error(KeyError("a"))
    second = task_error(KeyError("b"))
    assert type(first) is type(second)
    assert type(first) is not type(task_error(IndexError("c")))


def test_task_error_is_returned_unchanged() -> None:
    err = task_error(ValueError("boom"), "upstream")
    assert TaskError.from_exception(err, "downstream") is err
    assert err.task_name == "upstream"


def test_unsubclassable_cause_falls_back_to_plain_task_error() -> None:
    err = task_error(NoSubclassesError("no"))
    assert type(err) is TaskError
    assert isinstance(err.cause, NoSubclassesError)
    assert "NoSubclassesError" in err.cause_class_name
    assert str(err).rstrip().endswith("NoSubclassesError: no")


def test_keyboard_interrupt_in_a_task_is_not_an_interrupt_in_the_caller() -> None:
    err = task_error(KeyboardInterrupt())
    assert type(err) is TaskError
    assert not isinstance(err, KeyboardInterrupt)


def test_cause_class_reduce_ex_does_not_hijack_pickling() -> None:
    class ReducesItself(Exception):
        def __reduce_ex__(self, protocol: Any) -> Any:
            return (ReducesItself, self.args)

    err = task_error(ReducesItself("r"))
    assert isinstance(err, ReducesItself)
    back = cloudpickle.loads(cloudpickle.dumps(err))
    assert isinstance(back, TaskError)
    assert back.task_name == "f"


def test_worker_crashed_names_the_signal() -> None:
    err = WorkerCrashedError(task_name="f", exit_code=-int(signal.SIGKILL))
    assert "running task 'f' died (exit code -9 / SIGKILL)" in str(err)
    assert "(exit code 3)" in str(WorkerCrashedError(exit_code=3))


def test_object_store_full_shows_sizes() -> None:
    text = str(ObjectStoreFullError(10 << 20, 1536 << 20, 2 << 30, node="n1"))
    assert "10.0 MiB" in text
    assert "1.5 GiB of 2.0 GiB" in text
    assert "node n1" in text


def test_notes_survive_pickling() -> None:
    err = ObjectLostError("ab12")
    err.add_note("seen by get()")
    back = pickle.loads(pickle.dumps(err))
    assert back.__notes__ == ["seen by get()"]


text = st.text(max_size=30)
makers: list[Callable[[str, str], TaskgraphError]] = [
    lambda a, b: TaskCancelledError(a, b),
    lambda a, b: ObjectLostError(a, b),
    lambda a, b: ObjectReconstructionFailedError(a, b),
    lambda a, b: ProtocolError(a, peer=b),
    lambda a, b: SerializationError(a, b, deserializing=True),
    lambda a, b: ActorDiedError(a, b),
    lambda a, b: TaskError(a, ValueError(b)),
]


@given(st.sampled_from(makers), text, text)
def test_arbitrary_text_fields_round_trip(
    make: Callable[[str, str], TaskgraphError], a: str, b: str
) -> None:
    err = make(a, b)
    back = pickle.loads(pickle.dumps(err))
    assert comparable(back) == comparable(err)
