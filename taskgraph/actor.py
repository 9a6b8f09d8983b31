"""Actors: ``@tg.remote`` on a class. A stateful graph node pinned to one process.

``Cls.remote(...)`` records a creation task (placed like any task, by
resources) and returns an ``ActorHandle`` at once. ``handle.m.remote(...)``
records a method-call task bound to that actor; the scheduler hands calls to
the actor in submission order, each once its arguments are ready.

A handle holds a ref to the actor's *anchor*: the creation task's return
object. Handles therefore count like refs (pickled into tasks, returned,
put in containers), and when the last one is gone the scheduler frees the
anchor and stops the actor, unless it is detached.
"""

from __future__ import annotations

import inspect
from typing import Any

from taskgraph import _api, _options
from taskgraph import _wire as w
from taskgraph._ids import first_return, task_id
from taskgraph._object_ref import ObjectRef, ObjectRefGenerator
from taskgraph._remote_function import (
    FOREVER,
    RemoteFunction,
    encode_arguments,
    positional_arity,
)

ACTOR_OPTIONS = {
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "max_restarts",
    "max_task_retries",
    "max_concurrency",
    "name",
    "namespace",
    "lifetime",
    "get_if_exists",
    "scheduling_strategy",
    "accelerator_type",
}
TERMINATE = "__taskgraph_terminate__"
# A method's num_returns in the actor's method table when its calls stream
# (a generator method, or num_returns="streaming"): each call returns an
# ObjectRefGenerator.
STREAMING = -1


def method(*, num_returns: int | str = 1) -> Any:
    """Declare a method's number of returns: ``@tg.method(num_returns=2)``, or
    ``"streaming"`` (a generator method's default: its calls return an ObjectRefGenerator)."""
    _method_returns(num_returns)

    def decorate(function: Any) -> Any:
        function.__taskgraph_num_returns__ = num_returns
        return function

    return decorate


def _method_returns(num_returns: Any) -> int:
    """An actor method's num_returns as its table holds it (STREAMING for "streaming")."""
    if num_returns == "dynamic":
        raise ValueError(
            "num_returns='dynamic' is for remote functions; an actor's generator method "
            "streams its items: its calls return an ObjectRefGenerator"
        )
    _options.validate({"num_returns": num_returns})
    return STREAMING if num_returns == "streaming" else int(num_returns)


def _validate_actor_options(options: dict[str, Any]) -> dict[str, Any]:
    task_like = {k: v for k, v in options.items() if k in _options.TASK_OPTIONS}
    _options.validate(task_like)
    unknown = sorted(set(options) - ACTOR_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown actor option(s) {', '.join(map(repr, unknown))}; valid options are "
            f"{', '.join(sorted(ACTOR_OPTIONS))}"
        )
    for key in ("max_restarts", "max_task_retries"):
        n = options.get(key, 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < -1:
            raise ValueError(f"{key} must be an integer >= -1 (-1: forever), got {n!r}")
    n = options.get("max_concurrency")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"max_concurrency must be a positive integer, got {n!r}")
    if options.get("lifetime") not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or None, got {options['lifetime']!r}")
    for key in ("name", "namespace"):
        if options.get(key) is not None and not isinstance(options[key], str):
            raise TypeError(f"{key} must be a string, got {options[key]!r}")
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("get_if_exists=True needs a name")
    return options


class ActorClass:
    """What ``@tg.remote`` makes of a class: call ``.remote(...)`` to create an actor."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _validate_actor_options(dict(options))
        self._creator = RemoteFunction(cls, {})
        self._methods: dict[str, int] = {}
        self._signatures: dict[str, inspect.Signature | None] = {}
        self._is_async = False
        for name, member in inspect.getmembers(cls, predicate=callable):
            if name.startswith("__") and name != "__call__":
                continue
            generator = inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member)
            returns = getattr(member, "__taskgraph_num_returns__", None)
            if returns is None:
                returns = "streaming" if generator else 1
            self._methods[name] = _method_returns(returns)
            try:
                self._signatures[name] = inspect.signature(member)
            except (TypeError, ValueError):
                self._signatures[name] = None
            if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
                self._is_async = True
        self._methods[TERMINATE] = 1
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor class '{self.__name__}' cannot be instantiated directly. "
            f"Use '{self.__name__}.remote(...)' to create an actor."
        )

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[Any, ...]:
        raise TypeError(
            f"cannot subclass actor class '{self.__name__}': subclass the plain class and "
            "decorate the subclass with @taskgraph.remote"
        )

    def __repr__(self) -> str:
        return f"<ActorClass {self.__qualname__}>"

    def options(self, **options: Any) -> _BoundActorOptions:
        merged = {**self._options, **_validate_actor_options(dict(options))}
        return _BoundActorOptions(self, merged)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A graph node that creates this actor each time its graph is executed."""
        from taskgraph.dag import ClassNode

        return ClassNode(self, args, kwargs, self._options)

    def _remote(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> ActorHandle:
        init = self._signatures.get("__init__") or _init_signature(self._cls)
        if init is not None:
            try:
                init.bind(None, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"wrong arguments for actor '{self.__name__}': {exc}") from None
        client = _api.client()
        function_id = self._creator._export(client)
        data, nested, deps, held = encode_arguments(client, args, kwargs, self.__name__)
        place, hold = _actor_resources(options)
        runtime = _api._runtime
        namespace = options.get("namespace")
        if namespace is None and runtime is not None:
            namespace = runtime.namespace
        restarts = options.get("max_restarts", 0)
        retries = options.get("max_task_retries", 0)
        default_concurrency = 1000 if self._is_async else 1
        actor = w.ActorSpec(
            class_name=self.__qualname__,
            methods=dict(self._methods),
            hold=hold,
            max_restarts=FOREVER if restarts == -1 else restarts,
            max_task_retries=FOREVER if retries == -1 else retries,
            max_concurrency=options.get("max_concurrency") or default_concurrency,
            is_async=self._is_async,
            name=options.get("name") or "",
            namespace=namespace or "",
            detached=options.get("lifetime") == "detached",
            get_if_exists=bool(options.get("get_if_exists")),
        )
        base = client.new_id()
        actor_id = task_id(base)
        spec = w.TaskSpec(
            task_id=actor_id,
            function_id=function_id,
            name=f"{self.__qualname__}.__init__",
            args=data,
            deps=deps,
            nested=nested,
            resources=place,
            max_retries=0,
            strategy=_options.strategy_string(options.get("scheduling_strategy")),
            parent=client.parent_task or b"",
            job=client.job,
            site=client.sites.here(),
            actor_id=actor_id,
            actor=actor,
            namespace=actor.namespace,
        )
        if actor.name:
            reply = client.request(w.CreateNamedActor(0, spec))
            if reply.get("error"):
                raise ValueError(reply["error"])
            actor_id = bytes.fromhex(reply["actor_id"])
            anchor_id = first_return(actor_id)
            if reply.get("existing"):
                anchor = ObjectRef(anchor_id, client, borrowed=True)
                return ActorHandle(
                    actor_id,
                    anchor,
                    reply["methods"],
                    reply["class_name"],
                    name=actor.name,
                    namespace=actor.namespace,
                )
            anchor = ObjectRef(anchor_id, client)
            return ActorHandle(
                actor_id,
                anchor,
                actor.methods,
                actor.class_name,
                self._signatures,
                name=actor.name,
                namespace=actor.namespace,
            )
        anchor = ObjectRef(first_return(actor_id), client)
        client.submit(spec)
        del held  # the creation task holds them now
        return ActorHandle(actor_id, anchor, actor.methods, actor.class_name, self._signatures)


def _init_signature(cls: type) -> inspect.Signature | None:
    try:
        return inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return None


class _BoundActorOptions:
    def __init__(self, actor_class: ActorClass, options: dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._actor_class._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from taskgraph.dag import ClassNode

        return ClassNode(self._actor_class, args, kwargs, self._options)

    def get_or_create(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """The named actor if it exists, else a new one from these arguments: the older
        spelling of ``.options(name=..., get_if_exists=True).remote(...)``."""
        if not self._options.get("name"):
            raise ValueError("get_or_create() needs a name: .options(name=...).get_or_create()")
        return self._actor_class._remote(args, kwargs, {**self._options, "get_if_exists": True})


def _actor_resources(options: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(resources to place the actor, resources it holds while alive), as in Ray.

    By default an actor needs a CPU to be placed and holds none afterwards, so
    many idle actors fit on a node; an explicit ``num_cpus`` is held for life.
    """
    hold = _options.task_resources(options, default_cpus=0.0)
    place = dict(hold)
    if options.get("num_cpus") is None:
        place["CPU"] = 1.0
    return place, hold


class ActorHandle:
    """A reference to a live actor; pass it anywhere, every holder can call methods."""

    def __init__(
        self,
        actor_id: bytes,
        anchor: ObjectRef,
        methods: dict[str, int],
        class_name: str,
        signatures: dict[str, inspect.Signature | None] | None = None,
        name: str = "",
        namespace: str = "",
    ) -> None:
        self._actor_id = actor_id
        self._anchor = anchor
        self._methods = methods
        self._class_name = class_name
        self._signatures = signatures or {}
        self._name = name  # "": not a named actor (or a handle that was not told)
        self._namespace = namespace
        self._arities: dict[str, tuple[int, int] | None] = {}

    def _arity(self, name: str) -> tuple[int, int] | None:
        """(fewest, most) positional arguments of a method, ``self`` included."""
        if name not in self._arities:
            self._arities[name] = positional_arity(self._signatures.get(name))
        return self._arities[name]

    def __getattr__(self, name: str) -> ActorMethod:
        methods = self.__dict__.get("_methods")  # absent while unpickling
        if methods is None or name not in methods:
            class_name = self.__dict__.get("_class_name", "?")
            raise AttributeError(f"actor '{class_name}' has no method '{name}'")
        return ActorMethod(self, name, methods[name])

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"

    def _repr_html_(self) -> str:
        from taskgraph import _html  # here: executors never draw HTML

        return _html.actor(self._class_name, self._actor_id.hex(), self._name, self._namespace)

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            ActorHandle,
            (
                self._actor_id,
                self._anchor,
                self._methods,
                self._class_name,
                None,
                self._name,
                self._namespace,
            ),
        )


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor method '{self._handle._class_name}.{self._name}' cannot be called directly. "
            f"Use '.{self._name}.remote(...)'."
        )

    def options(self, **options: Any) -> _BoundMethodOptions:
        return _BoundMethodOptions(self, validate_method_options(options))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._remote(args, kwargs, {})

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A graph node that calls this actor each time its graph is executed."""
        from taskgraph.dag import ClassMethodNode

        return ClassMethodNode(self._handle, self._name, args, kwargs, {})

    def _remote(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        handle = self._handle
        signature = handle._signatures.get(self._name)
        arity = handle._arity(self._name)
        plain = not kwargs and arity is not None and arity[0] <= len(args) + 1 <= arity[1]
        if signature is not None and not plain:  # plain calls skip bind(): it is slow
            try:
                signature.bind(None, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(
                    f"wrong arguments for '{handle._class_name}.{self._name}': {exc}"
                ) from None
        client = _api.client()
        name = options.get("name") or f"{handle._class_name}.{self._name}"
        data, nested, deps, held = encode_arguments(client, args, kwargs, name)
        num_returns = options.get("num_returns", self._num_returns)
        streaming = num_returns == STREAMING
        base = client.new_id()
        spec = w.TaskSpec(
            task_id=task_id(base),
            function_id=b"",
            name=name,
            args=data,
            deps=deps,
            nested=[*nested, handle._anchor.id],
            num_returns=1 if streaming else num_returns,
            resources={},
            parent=client.parent_task or b"",
            job=client.job,
            site=client.sites.here(),
            generator=streaming,
            actor_id=handle._actor_id,
            method=self._name,
        )
        refs = client.actors.call(spec)
        del held  # the call holds them now
        if num_returns == 1:
            return refs[0]
        if streaming:
            return ObjectRefGenerator(spec.task_id, refs[0], client)
        return refs or None


class _BoundMethodOptions:
    def __init__(self, method: ActorMethod, options: dict[str, Any]) -> None:
        self._method = method
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._method._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from taskgraph.dag import ClassMethodNode

        method = self._method
        return ClassMethodNode(method._handle, method._name, args, kwargs, self._options)


def validate_method_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check an actor method call's ``.options(...)`` (num_returns as the method table's)."""
    unknown = sorted(set(options) - {"num_returns", "name"})
    if unknown:
        raise ValueError(f"unknown actor method option(s) {unknown}; valid: num_returns, name")
    _options.validate({k: v for k, v in options.items() if k != "num_returns"})
    if "num_returns" in options:
        options["num_returns"] = _method_returns(options["num_returns"])
    return options


class _ActorExit(BaseException):
    """Raised by ``exit_actor()``; the executor ends the actor gracefully."""


def exit_actor() -> None:
    """End the current actor from inside a method: atexit handlers run, later calls fail."""
    context = _api._current_task()
    if context is None or not context.actor_id:
        raise TypeError("exit_actor() can only be called inside an actor method")
    raise _ActorExit()


def kill(handle: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor at once (no atexit handlers); with no_restart=False it may restart."""
    if not isinstance(handle, ActorHandle):
        raise TypeError(f"kill() takes an ActorHandle, got {type(handle).__name__}")
    client = _api.client()
    client.send_soon(w.KillActor(handle._actor_id, no_restart))
    client.flush()
    client.actors.forget_route(handle._actor_id)  # later calls: through the scheduler, which knows


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a named actor; ``ValueError`` if no live actor has that name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty name, got {name!r}")
    client = _api.client()
    if namespace is None and _api._runtime is not None:
        namespace = _api._runtime.namespace
    reply = client.query("get_actor", {"name": name, "namespace": namespace or ""})
    if reply is None:
        where = f" in namespace {namespace!r}" if namespace else ""
        raise ValueError(f"no actor named {name!r}{where}")
    actor_id = bytes.fromhex(reply["actor_id"])
    anchor = ObjectRef(first_return(actor_id), client, borrowed=True)
    return ActorHandle(
        actor_id,
        anchor,
        reply["methods"],
        reply["class_name"],
        name=name,
        namespace=namespace or "",
    )
