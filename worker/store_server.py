"""The store's server: this host's processes create, seal, pin and unpin objects.

Every process on the host (executors and drivers alike) opens a store
connection on the daemon's Unix socket (a ``Hello`` with the role ``store``;
its other end is ``taskgraph/_store_client.py``) and asks the daemon's
``ObjectStore`` (``store.py``) through it. Each request but an unpin is
answered, in order; a connection's pins are dropped when it closes.

Until the scheduler hears of an object, the daemon remembers who sealed it:
an executor's (``daemon.unannounced``: freed if the executor dies first,
``daemon_executors.py``), or another process's (``daemon.sealed_by_others``:
when that process leaves, the scheduler is told, ``StoreClientGone``, and
frees those it never heard of).

Plain functions over ``WorkerDaemon`` (``daemon.py``), part of its IO shell.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tornado.iostream import IOStream, StreamClosedError

from taskgraph import _wire as w
from taskgraph._transport import FrameReader, write_batch
from taskgraph.exceptions import ProtocolError

from . import store

if TYPE_CHECKING:
    from .daemon import WorkerDaemon

log = logging.getLogger("taskgraph.worker")


async def serve(daemon: WorkerDaemon, stream: IOStream, client_id: bytes) -> None:
    """One process on this host writing and reading objects; see worker/store.py."""
    objects = daemon.objects
    assert objects is not None
    holder = ("store", id(stream), client_id)
    reader = FrameReader(stream, w.STORE_REQUESTS)
    try:
        while True:
            replies: list[w.Msg] = []
            for msg in await reader.read():
                if isinstance(msg, w.StoreUnpin):
                    for object_id in msg.object_ids:
                        objects.unpin(object_id, holder)
                else:
                    try:
                        replies.append(_request(daemon, objects, msg, holder))
                    except ProtocolError:
                        raise
                    except Exception as exc:  # the asker hears of it, the daemon goes on
                        log.exception("object store request %s failed", type(msg).__name__)
                        replies.append(
                            w.StoreReply(getattr(msg, "object_id", b""), error=repr(exc))
                        )
            if replies:
                write_batch(stream, replies)
    except (StreamClosedError, ProtocolError):
        stream.close()
    finally:
        objects.drop_holder(holder)
        sealed = daemon.sealed_by_others.pop(client_id, None)
        if sealed:
            daemon.to_scheduler(w.StoreClientGone(client_id, list(sealed)))


def _request(
    daemon: WorkerDaemon, objects: store.ObjectStore, msg: Any, holder: Any
) -> w.StoreReply:
    if isinstance(msg, w.StoreCreate):
        try:
            offset = objects.create(msg.object_id, msg.size, holder)
        except store.StoreFull as exc:
            return w.StoreReply(
                msg.object_id, full=[exc.needed, exc.used, exc.capacity], error=exc.reason
            )
        except ValueError as exc:
            return w.StoreReply(msg.object_id, error=str(exc))
        return w.StoreReply(msg.object_id, offset=offset, size=msg.size)
    if isinstance(msg, w.StoreSeal):
        objects.seal(msg.object_id, holder)
        if holder[2] in daemon.by_client:  # an executor's: see unannounced
            daemon.unannounced.setdefault(holder[2], set()).add(msg.object_id)
        else:
            daemon.sealed_by_others.setdefault(holder[2], set()).add(msg.object_id)
        return w.StoreReply(msg.object_id)
    if isinstance(msg, w.StorePin):
        try:
            where = objects.pin(msg.object_id, holder)
        except KeyError:
            return w.StoreReply(msg.object_id, error="it is not in its worker's object store")
        return w.StoreReply(msg.object_id, offset=where.offset, size=where.size, path=where.path)
    if isinstance(msg, w.StoreStats):
        return w.StoreReply(b"", stats=objects.stats(), object_ids=list(objects.entries))
    raise ProtocolError(f"a store client may not send {type(msg).__name__}")
