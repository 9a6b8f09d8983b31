"""Values, code and errors across process boundaries, checked against fresh interpreters."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgraph import serialization
from taskgraph.exceptions import SerializationError, TaskError
from taskgraph.serialization import (
    dumps,
    dumps_error,
    dumps_function,
    dumps_oob,
    function_id,
    loads,
    loads_error,
    loads_function,
    note_ref,
    serialized_size,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFSET = 1000


# -- code a worker cannot import: defined here, in a test module ----------------


class CustomTaskFailure(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"failed with code {code}")
        self.code = code


def add_offset(x: int) -> int:
    return x + OFFSET


def work(x: int) -> dict[str, int]:
    return {"result": add_offset(x)}


def fail(code: int) -> None:
    raise CustomTaskFailure(code)


def run_fresh(tmp_path: Path, payload: bytes, body: str) -> Any:
    """Run ``body`` in a new interpreter that can import taskgraph but not this module.

    ``body`` finds the payload in ``payload`` and leaves its answer in ``result``
    (bytes), which is returned.
    """
    (tmp_path / "payload.bin").write_bytes(payload)
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        try:
            import {module}
        except ImportError:
            pass
        else:
            sys.exit("the test module should not be importable here")
        from taskgraph.serialization import *
        payload = Path("payload.bin").read_bytes()
        """
    ).format(module=__name__)
    script += textwrap.dedent(body) + '\nPath("result.bin").write_bytes(result)\n'
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "result.bin").read_bytes()


def test_test_module_functions_run_in_a_process_that_cannot_import_them(tmp_path: Path) -> None:
    payload = dumps_function(work)
    result = run_fresh(
        tmp_path,
        payload,
        """
        func = loads_function(payload)
        result = dumps(func(5))[0]
        """,
    )
    assert loads(result) == {"result": 1005}


def test_test_module_exception_comes_back_from_a_fresh_process(tmp_path: Path) -> None:
    payload = dumps_function(fail)
    result = run_fresh(
        tmp_path,
        payload,
        """
        func = loads_function(payload)
        try:
            func(7)
        except Exception as exc:
            result = dumps_error(exc, "fail")
        """,
    )
    err = loads_error(result)
    assert isinstance(err, TaskError)
    assert type(err).__name__ == "TaskError(CustomTaskFailure)"
    assert err.pid != os.getpid()
    assert "failed with code 7" in str(err)
    assert "in fail" in err.remote_traceback
    assert err.cause is not None
    assert type(err.cause).__name__ == "CustomTaskFailure"
    assert err.code == 7  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="failed with code 7"):
        raise err


def test_local_package_travels_by_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tg_local_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "src" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (package / "core.py").write_text(
        "from . import helpers\n\ndef compute(x):\n    return helpers.double(x) + 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for mod in (name, f"{name}.helpers", f"{name}.core"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    core = __import__(f"{name}.core", fromlist=["compute"])

    payload = dumps_function(core.compute)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_fresh(run_dir, payload, "result = dumps(loads_function(payload)(20))[0]")
    assert loads(result) == 41


def test_taskgraph_and_installed_packages_go_by_reference() -> None:
    payload = dumps_function(serialization.loads)
    assert b"taskgraph.serialization" in payload
    assert len(payload) < 200  # a name to import, not the code
    assert len(dumps_function(np.add)) < 200
    assert serialization._is_installed(json)
    assert serialization._is_installed(np)
    assert serialization._is_installed(sys)
    assert not serialization._is_installed(sys.modules[__name__])


def test_register_local_modules_looks_at_each_module_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serialization._register_local_modules()
    looked_at: list[str] = []
    real = serialization._is_installed

    def spy(module: Any) -> bool:
        looked_at.append(module.__name__)
        return real(module)

    monkeypatch.setattr(serialization, "_is_installed", spy)
    serialization._register_local_modules()
    assert looked_at == []


def test_functions_round_trip_in_process() -> None:
    assert loads_function(dumps_function(work))(1) == {"result": 1001}
    assert loads_function(dumps_function(lambda x: x - 1))(1) == 0


def test_function_id_is_a_content_hash() -> None:
    first = function_id(dumps_function(work))
    assert len(first) == 16
    assert function_id(dumps_function(work)) == first
    assert function_id(dumps_function(fail)) != first


def test_unpicklable_function_names_itself() -> None:
    lock = threading.Lock()

    def holds_lock() -> bool:
        return lock.locked()

    with pytest.raises(SerializationError, match=r"the function '.*holds_lock'"):
        dumps_function(holds_lock)


# -- data ----------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=25,
)


@settings(deadline=None)
@given(json_like)
def test_json_like_values_round_trip(value: Any) -> None:
    data, refs = dumps(value)
    assert loads(data) == value
    assert refs == []
    header, buffers, refs = dumps_oob(value)
    assert loads(header, buffers) == value


def test_lambdas_inside_data_round_trip() -> None:
    data, _ = dumps({"f": lambda x: x * 3})
    assert loads(data)["f"](2) == 6


def test_numpy_array_round_trips() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(loads(dumps(array)[0]), array)
    header, buffers, _ = dumps_oob(array)
    assert buffers
    np.testing.assert_array_equal(loads(header, buffers), array)


def test_arrow_table_round_trips() -> None:
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", None]})
    assert loads(dumps(table)[0]).equals(table)
    header, buffers, _ = dumps_oob(table)
    assert buffers
    assert loads(header, buffers).equals(table)


def arrow_sample() -> pa.Table:
    schema = pa.schema(
        [
            pa.field("n", pa.int64(), metadata={"unit": "count"}),
            pa.field("name", pa.string()),
            pa.field("kind", pa.dictionary(pa.int8(), pa.string())),
        ],
        metadata={"source": "test"},
    )
    kinds = pa.array(["a", "b", "a", "c"]).dictionary_encode()
    return pa.table([pa.array([1, 2, 3, 4]), pa.array(["w", None, "y", "z"]), kinds], schema)


def test_arrow_table_travels_as_one_ipc_stream() -> None:
    table = arrow_sample()
    header, buffers, _ = dumps_oob(table)
    assert len(buffers) == 1
    assert pa.ipc.open_stream(pa.py_buffer(buffers[0])).read_all().equals(table)
    back = loads(header, buffers)
    assert back.equals(table)
    assert back.schema.equals(table.schema, check_metadata=True)
    assert back.schema.metadata == {b"source": b"test"}
    assert back.schema.field("n").metadata == {b"unit": b"count"}
    assert loads(dumps(table)[0]).schema.equals(table.schema, check_metadata=True)


def test_arrow_record_batch_travels_as_one_ipc_stream() -> None:
    (batch,) = arrow_sample().to_batches()
    header, buffers, _ = dumps_oob(batch)
    assert len(buffers) == 1
    back = loads(header, buffers)
    assert isinstance(back, pa.RecordBatch)
    assert back.equals(batch)
    assert back.schema.equals(batch.schema, check_metadata=True)
    assert loads(dumps(batch)[0]).equals(batch)


def test_arrow_values_nested_in_containers_round_trip() -> None:
    table = arrow_sample()
    (batch,) = table.to_batches()
    value = {"table": table, "more": [table, batch], "x": 1}
    header, buffers, _ = dumps_oob(value)
    assert len(buffers) == 2  # the repeated table is pickled once
    back = loads(header, buffers)
    assert back["table"].equals(table) and back["more"][1].equals(batch)
    assert back["more"][0] is back["table"]
    assert back["x"] == 1


@pytest.mark.parametrize(
    "table",
    [
        pa.table({}),
        pa.schema([("a", pa.int64()), ("b", pa.string())]).empty_table(),
        pa.Table.from_batches([], pa.schema([("a", pa.float32())])),
        pa.table({"a": [1, 2, 3]}).slice(1, 0),
    ],
    ids=["no-columns", "no-rows", "no-chunks", "empty-slice"],
)
def test_empty_arrow_tables_round_trip(table: pa.Table) -> None:
    header, buffers, _ = dumps_oob(table)
    back = loads(header, buffers)
    assert back.equals(table)
    assert back.schema.equals(table.schema) and back.num_rows == 0


def test_empty_arrow_record_batch_round_trips() -> None:
    batch = pa.RecordBatch.from_pydict({"a": pa.array([], pa.int64())})
    header, buffers, _ = dumps_oob(batch)
    back = loads(header, buffers)
    assert isinstance(back, pa.RecordBatch) and back.equals(batch)


def test_sliced_and_rechunked_arrow_tables_round_trip() -> None:
    colours = pa.chunked_array(
        [pa.array(["red", "blue"]).dictionary_encode(), pa.array(["green"]).dictionary_encode()]
    )
    table = pa.table({"colour": colours, "n": pa.chunked_array([[1], [2, 3]])})
    for value in (table, table.slice(1, 2), table.combine_chunks().to_batches()[0].slice(1)):
        header, buffers, _ = dumps_oob(value)
        assert loads(header, buffers).equals(value)


def address_range(array: np.ndarray) -> range:
    return range(array.ctypes.data, array.ctypes.data + array.nbytes)


@pytest.mark.parametrize("kind", ["table", "batch"])
def test_loaded_arrow_columns_are_views_of_the_out_of_band_buffer(kind: str) -> None:
    table = pa.table({"x": np.arange(100_000), "y": np.linspace(0, 1, 100_000)})
    value = table if kind == "table" else table.to_batches()[0]
    header, (stream,), _ = dumps_oob(value)
    # Like a shared-memory view: read-only memory that the loaded value must not copy.
    memory = np.frombuffer(stream, np.uint8).copy()
    memory.flags.writeable = False
    back = loads(header, [memory])
    assert back.equals(value)
    within = address_range(memory)
    for name in ("x", "y"):
        column = back.column(name)
        (array,) = column.chunks if kind == "table" else [column]
        data = array.buffers()[1]
        assert data.address in within and data.address + data.size - 1 in within
    del memory  # the loaded columns keep the buffer alive
    assert back.column("x")[99_999].as_py() == 99_999


class Celsius(pa.ExtensionType):
    def __init__(self) -> None:
        super().__init__(pa.float64(), "taskgraph.test.celsius")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> Celsius:
        return cls()


def test_arrow_extension_types_keep_their_type() -> None:
    # Not registered, so an IPC stream would read back as plain float64.
    storage = pa.array([20.5, 37.0])
    temperatures = pa.ExtensionArray.from_storage(Celsius(), storage)
    table = pa.table({"t": temperatures, "n": [1, 2]})
    header, buffers, _ = dumps_oob(table)
    back = loads(header, buffers)
    assert isinstance(back.schema.field("t").type, Celsius)
    assert back.equals(table)


def test_pickling_never_imports_pyarrow(tmp_path: Path) -> None:
    script = (
        "import sys; from taskgraph.serialization import dumps, dumps_oob\n"
        "dumps_oob({'a': [1, 2], 'f': lambda x: x}); dumps(object())\n"
        "assert 'pyarrow' not in sys.modules, 'pickling imported pyarrow'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_large_array_goes_out_of_band() -> None:
    array = np.random.default_rng(0).integers(0, 256, size=1 << 20, dtype=np.uint8)
    header, buffers, refs = dumps_oob(array)
    assert refs == []
    assert len(buffers) >= 1
    assert len(header) < 1024
    assert array.tobytes()[:64] not in header
    assert serialized_size(header, buffers) == len(header) + array.nbytes
    np.testing.assert_array_equal(loads(header, buffers), array)
    inline, _ = dumps(array)
    assert len(inline) > array.nbytes  # in-band form carries the bytes itself


def test_read_only_buffer_loads_as_a_read_only_view() -> None:
    array = np.arange(1 << 16, dtype=np.int64)
    header, buffers, _ = dumps_oob(array)
    frozen = bytes(buffers[0].raw())  # stands in for a read-only shared-memory mapping
    back = loads(header, [memoryview(frozen)])
    np.testing.assert_array_equal(back, array)
    assert not back.flags.writeable
    assert np.shares_memory(back, np.frombuffer(frozen, dtype=np.uint8))


# -- object refs inside values -------------------------------------------------


class FakeRef:
    """Stands in for ObjectRef: reports its id while being pickled."""

    def __init__(self, oid: bytes) -> None:
        self.oid = oid

    def __reduce__(self) -> tuple[Any, ...]:
        note_ref(self.oid)
        return (FakeRef, (self.oid,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeRef) and other.oid == self.oid

    def __hash__(self) -> int:
        return hash(self.oid)


def test_refs_inside_values_are_collected_in_order_without_repeats() -> None:
    a, b, c = FakeRef(b"a" * 16), FakeRef(b"b" * 16), FakeRef(b"c" * 16)
    value = {"x": [b, {"deep": a}], "y": (b, c), "z": FakeRef(b"b" * 16)}
    data, refs = dumps(value)
    assert refs == [b.oid, a.oid, c.oid]
    assert loads(data) == value
    _, _, oob_refs = dumps_oob([c, np.zeros(10), c])
    assert oob_refs == [c.oid]


def test_note_ref_outside_dumps_is_ignored() -> None:
    assert note_ref(b"stray") is False  # the ref pins its object instead
    assert dumps([1, 2])[1] == []


class NestedDumps:
    """Pickles an inner value with its own dumps call while the outer one runs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.inner_refs: list[bytes] = []

    def __reduce__(self) -> tuple[Any, ...]:
        data, self.inner_refs = dumps(self.inner)
        return (loads, (data,))


def test_nested_dumps_keep_their_refs_apart() -> None:
    nested = NestedDumps([FakeRef(b"inner")])
    _, refs = dumps([FakeRef(b"outer"), nested])
    assert refs == [b"outer"]
    assert nested.inner_refs == [b"inner"]


class NotesFromAnotherThread:
    def __reduce__(self) -> tuple[Any, ...]:
        thread = threading.Thread(target=note_ref, args=(b"other thread",))
        thread.start()
        thread.join()
        return (NotesFromAnotherThread, ())


def test_refs_noted_by_another_thread_are_not_collected() -> None:
    assert dumps([NotesFromAnotherThread(), FakeRef(b"mine")])[1] == [b"mine"]


# -- failures ------------------------------------------------------------------


def generator() -> Iterator[int]:
    yield 1


@pytest.fixture
def open_socket() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        yield sock


@pytest.mark.parametrize("kind", ["lock", "generator", "socket"])
def test_unpicklable_values_raise_serialization_error(
    kind: str, open_socket: socket.socket
) -> None:
    value = {"lock": threading.Lock(), "generator": generator(), "socket": open_socket}[kind]
    what = "the argument 'x' of task 'f'"
    for dump in (dumps, dumps_oob):
        with pytest.raises(SerializationError) as info:
            dump({"nested": [value]}, what=what)
        assert str(info.value).startswith(f"Could not serialize {what}: cannot pickle")
        assert isinstance(info.value, TypeError)
        assert info.value.__cause__ is not None


def test_lock_message_matches_the_documented_example() -> None:
    with pytest.raises(SerializationError) as info:
        dumps(threading.Lock(), what="the argument 'x' of task 'f'")
    assert str(info.value).startswith(
        "Could not serialize the argument 'x' of task 'f': cannot pickle '_thread.lock' object"
    )


def test_undecodable_bytes_raise_serialization_error() -> None:
    with pytest.raises(SerializationError, match="Could not deserialize the return value"):
        loads(b"not a pickle", what="the return value of task 'f'")
    with pytest.raises(SerializationError, match="expected an exception"):
        loads_error(pickle.dumps(42))


def raise_and_dump(exc: BaseException, task_name: str) -> bytes:
    try:
        raise exc
    except BaseException as caught:
        return dumps_error(caught, task_name)


def test_dumps_error_keeps_the_cause_class() -> None:
    err = loads_error(raise_and_dump(KeyError("missing"), "lookup"))
    assert isinstance(err, KeyError)
    assert isinstance(err, TaskError)
    assert err.task_name == "lookup"
    assert "raise_and_dump" in err.remote_traceback


class HoldsLock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def test_dumps_error_falls_back_to_text_when_the_cause_will_not_pickle() -> None:
    err = loads_error(raise_and_dump(HoldsLock("disk on fire"), "burn"))
    assert type(err) is TaskError
    assert err.cause is None
    assert err.cause_class_name.endswith("HoldsLock")
    assert "disk on fire" in str(err)
    assert "raise_and_dump" in str(err)  # the remote traceback text survived
    assert any("could not be pickled" in note for note in err.__notes__)


class BreaksOnLoad(Exception):
    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("refusing to unpickle")


def test_dumps_error_falls_back_when_the_cause_will_not_unpickle() -> None:
    err = loads_error(raise_and_dump(BreaksOnLoad("x"), "fragile"))
    assert type(err) is TaskError
    assert err.cause is None
    assert "BreaksOnLoad" in str(err)


def test_propagated_task_error_is_sent_as_is() -> None:
    upstream = loads_error(raise_and_dump(ValueError("bad input"), "upstream"))
    again = loads_error(dumps_error(upstream, "downstream"))
    assert isinstance(again, ValueError)
    assert isinstance(again, TaskError)
    assert again.task_name == "upstream"
    assert cloudpickle.loads(cloudpickle.dumps(again)).task_name == "upstream"
