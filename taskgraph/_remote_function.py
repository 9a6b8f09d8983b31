"""Remote functions: ``@tg.remote`` on a function, ``.remote()``, ``.options()``, ``.bind()``.

``.remote()`` checks the call against the function's signature (in the
caller, like a normal call would), serializes the arguments, records a
``TaskSpec`` in the client's pending graph and returns refs at once. The
function's code is serialized once per ``RemoteFunction`` and exported once
per client, by content hash.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from taskgraph import _api, _options, serialization
from taskgraph import _wire as w
from taskgraph._client import Client
from taskgraph._ids import return_ids
from taskgraph._ids import task_id as make_task_id
from taskgraph._object_io import INLINE_LIMIT
from taskgraph._object_ref import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator

FOREVER = w.FOREVER  # (actor.py takes it from here)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What a set of options means for every call: worked out once, not per call."""

    name: str | None
    num_returns: int
    streaming: bool
    dynamic: bool  # num_returns="dynamic": runs as DynamicGenerator(function)
    resources: dict[str, float]
    max_retries: int
    retry_exceptions: bool
    retry_on: bytes  # retry_exceptions as a list: its classes, pickled
    max_calls: int
    strategy: str


def positional_arity(signature: inspect.Signature | None) -> tuple[int, int] | None:
    """(fewest, most) positional arguments when that alone decides a plain call's validity."""
    if signature is None:
        return None
    low = high = 0
    for p in signature.parameters.values():
        if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            return None  # *args, keyword-only or positional-only: let bind() judge
        high += 1
        if p.default is inspect.Parameter.empty:
            low += 1
    return low, high


class RemoteFunction:
    def __init__(self, function: Any, options: dict[str, Any]) -> None:
        if not callable(function):
            raise TypeError(f"@remote needs a function or a class, got {function!r}")
        self._function = function
        self._options = _options.validate(dict(options))
        self._name = getattr(function, "__qualname__", getattr(function, "__name__", "task"))
        try:
            self._signature: inspect.Signature | None = inspect.signature(function)
        except (TypeError, ValueError):
            self._signature = None
        self._arity = positional_arity(self._signature)
        self._prepared: dict[int, tuple[dict[str, Any], _Prepared]] = {}
        self._is_generator = inspect.isgeneratorfunction(function)
        self._payload: bytes | None = None
        self._function_id = b""
        self._dynamic: tuple[bytes, bytes] | None = None  # (id, payload) of its dynamic form
        self.__doc__ = function.__doc__
        self.__name__ = getattr(function, "__name__", "task")
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote function '{self._name}' cannot be called directly. "
            f"Use '{self.__name__}.remote(...)' to run it as a task."
        )

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"

    def options(self, **options: Any) -> _BoundOptions:
        merged = {**self._options, **_options.validate(dict(options))}
        return _BoundOptions(self, merged)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from taskgraph.dag import FunctionNode

        return FunctionNode(self, args, kwargs, self._options)

    def _export(self, client: Client) -> bytes:
        if self._payload is None:
            self._payload = serialization.dumps_function(self._function)
            self._function_id = serialization.function_id(self._payload)
        client.export(self._function_id, self._payload)
        return self._function_id

    def _export_dynamic(self, client: Client) -> bytes:
        """The function id of ``DynamicGenerator(function)``, what a dynamic call runs."""
        if self._dynamic is None:
            what = f"the function {self._name!r}"
            payload = serialization.dumps_function(
                DynamicGenerator(self._function, self._name), what
            )
            self._dynamic = (serialization.function_id(payload), payload)
        client.export(*self._dynamic)
        return self._dynamic[0]

    def _prepare(self, options: dict[str, Any]) -> _Prepared:
        cached = self._prepared.get(id(options))
        if cached is not None and cached[0] is options:
            return cached[1]
        returns = options.get("num_returns", "streaming" if self._is_generator else 1)
        streaming = returns == "streaming"
        retries = options.get("max_retries", _options.DEFAULT_MAX_RETRIES)
        retry = options.get("retry_exceptions", False)
        retry_on = b""
        if isinstance(retry, list | tuple) and retry:
            retry_on = serialization.dumps_function(tuple(retry), "retry_exceptions")
        prepared = _Prepared(
            name=options.get("name") or self._name,
            num_returns=1 if isinstance(returns, str) else returns,
            streaming=streaming,
            dynamic=returns == "dynamic",
            resources=_options.task_resources(options),
            max_retries=FOREVER if retries == -1 else retries,
            retry_exceptions=bool(retry),
            retry_on=retry_on,
            max_calls=_options.default_max_calls(options),
            strategy=_options.strategy_string(options.get("scheduling_strategy")),
        )
        self._prepared[id(options)] = (options, prepared)
        return prepared

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        arity = self._arity
        if not kwargs and arity is not None and arity[0] <= len(args) <= arity[1]:
            return
        if self._signature is not None:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"wrong arguments for task '{self._name}': {exc}") from None

    def _remote(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        self._check_arguments(args, kwargs)
        p = self._prepare(options)
        client = _api.client()
        function_id = self._export_dynamic(client) if p.dynamic else self._export(client)
        name = p.name or self._name
        data, nested, deps, held = encode_arguments(client, args, kwargs, name)
        base = client.new_id()
        task_id = make_task_id(base)
        streaming, num_returns = p.streaming, p.num_returns
        spec = w.TaskSpec(
            task_id=task_id,
            function_id=function_id,
            name=name,
            args=data,
            deps=deps,
            nested=nested,
            num_returns=num_returns,
            resources=p.resources,
            max_retries=p.max_retries,
            retry_exceptions=p.retry_exceptions,
            retry_on=p.retry_on,
            max_calls=p.max_calls,
            strategy=p.strategy,
            parent=client.parent_task or b"",
            job=client.job,
            site=client.sites.here(),
            generator=streaming,
            namespace=_api.current_namespace(),
        )
        refs = submit(client, spec)
        del held  # the task holds them now
        if streaming:
            return ObjectRefGenerator(task_id, refs, client)
        return refs


class DynamicGenerator:
    """What a ``num_returns="dynamic"`` task runs: the generator to its end, each item
    put as it comes; it returns their refs (the last holds the error, if one was raised)."""

    def __init__(self, function: Any, name: str) -> None:
        self.function = function
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> DynamicObjectRefGenerator:
        client = _api.client()
        refs: list[ObjectRef] = []
        try:
            for item in self.function(*args, **kwargs):
                refs.append(client.put(item))
        except Exception as exc:
            refs.append(client.put_error(serialization.dumps_error(exc, self.name)))
        return DynamicObjectRefGenerator(refs)


def submit(client: Client, spec: w.TaskSpec) -> Any:
    """Record a task; hand back its refs as Ray does: one ref, None, or a list."""
    refs = [ObjectRef(oid, client) for oid in return_ids(spec.task_id, spec.num_returns)]
    client.submit(spec)
    if spec.num_returns == 1:
        return refs[0]
    if spec.num_returns == 0:
        return None
    return refs


class _BoundOptions:
    """``f.options(...)``: the same function with other options, for one call or many."""

    def __init__(self, function: RemoteFunction, options: dict[str, Any]) -> None:
        self._function = function
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from taskgraph.dag import FunctionNode

        return FunctionNode(self._function, args, kwargs, self._options)


def encode_arguments(
    client: Client, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> tuple[bytes, list[bytes], list[bytes], list[Any]]:
    """Serialize a call's arguments; return (data, nested ref ids, dependency ids, held).

    Top-level refs are dependencies: the task runs when they are ready and
    receives their values. Large plain arguments are put into the object
    store first, so they are stored once and read without copies; ``held``
    are the refs of those puts, which the caller keeps until the call is sent
    (else their release could reach the scheduler first and free them).
    """
    what = f"the arguments of task '{name}'"
    data, contained = serialization.dumps((args, kwargs), what=what)
    held: list[Any] = []
    if len(data) > INLINE_LIMIT:
        args = tuple(_put_if_large(client, a, what) for a in args)
        kwargs = {k: _put_if_large(client, v, what) for k, v in kwargs.items()}
        data, contained = serialization.dumps((args, kwargs), what=what)
        held = [v for v in (*args, *kwargs.values()) if isinstance(v, ObjectRef)]
    deps = list(dict.fromkeys(v.id for v in (*args, *kwargs.values()) if isinstance(v, ObjectRef)))
    top = set(deps)
    nested = [oid for oid in contained if oid not in top]
    return data, nested, deps, held


def _put_if_large(client: Client, value: Any, what: str) -> Any:
    if isinstance(value, ObjectRef):
        return value
    data, _ = serialization.dumps(value, what=what)
    if len(data) <= INLINE_LIMIT // 4:
        return value
    return client.put(value)
