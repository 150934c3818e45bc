"""The QMP server: a private unix socket, a few clients, commands in order, events to all.

One asyncio loop in its own thread (``pyvmm-qmp``) owns the socket and every client.
Commands that may wait (pausing vCPUs, calls on the device event loop) run on one worker
thread, so they execute one at a time across all clients, in the order received; the QMP
thread keeps reading, writing and delivering events meanwhile.

Per client: the greeting, then only ``qmp_capabilities`` until negotiation (as QEMU), then
any command; events from the :class:`~pyvmm.events.EventBus` are delivered only after
negotiation. Bounds: at most :data:`MAX_CLIENTS` clients (more are told so and closed), one
message at most :data:`~pyvmm.qmp.protocol.MAX_MESSAGE_BYTES`, at most
:data:`MAX_QUEUED_EVENTS` undelivered events per client (a client that does not read misses
later events, logged once), and a client that sends commands without
reading the replies is not read from until it catches up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
from typing import Any

from pyvmm.errors import VmmError
from pyvmm.events import Event, EventBus
from pyvmm.qmp import protocol
from pyvmm.qmp.commands import CommandTable
from pyvmm.unixsocket import listen_unix
from pyvmm.qmp.protocol import COMMAND_NOT_FOUND, GENERIC_ERROR, FramingError, JsonSplitter, QmpError

log = logging.getLogger(__name__)

MAX_CLIENTS = 4
MAX_QUEUED_EVENTS = 1000
MAX_QUEUED_REPLIES = 16
READ_CHUNK = 4096
_TOP_LEVEL_KEYS = {"execute", "arguments", "id"}


class _Client:
    def __init__(self, number: int, writer: asyncio.StreamWriter):
        self.number = number
        self.writer = writer
        self.negotiated = False
        self.outbox: asyncio.Queue[tuple[bool, bytes] | None] = asyncio.Queue()
        """(is_event, wire bytes) in send order; None ends the writer."""
        self.queued_events = 0
        self.dropped_events = 0
        self.writer_task: asyncio.Task | None = None

    def send(self, message: dict[str, Any]) -> None:
        self.outbox.put_nowait((False, protocol.encode(message)))

    def send_event(self, event: Event) -> None:
        if self.queued_events >= MAX_QUEUED_EVENTS:
            self.dropped_events += 1
            if self.dropped_events == 1:
                log.warning("QMP client %d is not reading: dropping events", self.number)
            return
        self.queued_events += 1
        self.outbox.put_nowait((True, protocol.encode(protocol.event_message(event))))


class QmpServer:
    """Serves QMP for ``table`` on ``path`` (mode 0600), forwarding events from ``events``."""

    def __init__(self, table: CommandTable, events: EventBus, path: str | os.PathLike):
        self.table = table
        self.path = os.fspath(path)
        self.loop = asyncio.new_event_loop()
        self._clients: set[_Client] = set()
        self._count = 0
        self._handling = 0
        """Commands received and not answered yet (``quit``'s reply must go out before closing)."""
        self._server: asyncio.AbstractServer | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyvmm-qmp-cmd")
        self._thread = threading.Thread(target=self._run, name="pyvmm-qmp", daemon=True)
        self._first_client = threading.Event()
        self._unsubscribe = None
        self._events = events

    # -- lifecycle (caller's thread) ----------------------------------------------------------------

    def start(self) -> QmpServer:
        """Bind and listen (errors are VmmError here, before the guest runs), then serve."""
        try:
            sock = listen_unix(self.path, backlog=MAX_CLIENTS, what="QMP socket")
            sock.setblocking(False)
            self._server = self.loop.run_until_complete(
                asyncio.start_unix_server(self._serve_client, sock=sock, limit=READ_CHUNK))
        except BaseException:
            self.loop.close()
            raise
        self._unsubscribe = self._events.subscribe(self._on_event)
        self._thread.start()
        log.info("QMP listening on %s", self.path)
        return self

    def wait_for_client(self, timeout: float | None = None) -> bool:
        """Block until a first client has connected (``wait=on``)."""
        return self._first_client.wait(timeout)

    def close(self, flush_timeout: float = 1.0) -> None:
        """Deliver what is queued (the last reply, ``SHUTDOWN``), close clients, remove the socket."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._close_all(flush_timeout), self.loop)
            try:
                future.result(flush_timeout + 2.0)
            except Exception:
                log.debug("QMP: closing clients did not finish cleanly", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
        self._worker.shutdown(wait=False, cancel_futures=True)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

    async def _close_all(self, timeout: float) -> None:
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + timeout / 2
        while self._handling and self.loop.time() < deadline:
            await asyncio.sleep(0.01)  # e.g. the reply to the 'quit' that got us here
        for client in list(self._clients):
            client.outbox.put_nowait(None)
        tasks = [c.writer_task for c in self._clients if c.writer_task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for client in list(self._clients):
            client.writer.close()

    # -- events (any thread) ------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:
            pass  # the loop is closed: the server is going away

    def _deliver(self, event: Event) -> None:
        for client in self._clients:
            if client.negotiated:
                client.send_event(event)

    # -- one client (QMP thread) -------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        client = _Client(self._count, writer)
        if len(self._clients) >= MAX_CLIENTS:
            log.warning("QMP: refusing client %d: already %d clients", client.number, MAX_CLIENTS)
            writer.write(protocol.encode(protocol.failure(GENERIC_ERROR, f"too many QMP clients ({MAX_CLIENTS})")))
            await _close(writer)
            return
        self._clients.add(client)
        self._first_client.set()
        log.debug("QMP client %d connected", client.number)
        client.writer_task = asyncio.create_task(self._write_loop(client))
        client.send(protocol.greeting(self.table.lookup("query-version").handler({})))
        splitter = JsonSplitter()
        try:
            while True:
                while client.outbox.qsize() - client.queued_events > MAX_QUEUED_REPLIES:
                    await asyncio.sleep(0.05)  # the client does not read its replies: stop reading
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                try:
                    messages = splitter.feed(data)
                except FramingError as exc:
                    client.send(protocol.failure(GENERIC_ERROR, f"JSON parse error, {exc}; closing"))
                    break
                for raw in messages:
                    self._handling += 1
                    try:
                        await self._handle(client, raw)
                    finally:
                        self._handling -= 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(client)
            client.outbox.put_nowait(None)
            if client.writer_task is not None:
                try:
                    await asyncio.wait_for(client.writer_task, 1.0)
                except (asyncio.TimeoutError, asyncio.CancelledError, ConnectionError):
                    pass
            await _close(writer)
            log.debug("QMP client %d disconnected", client.number)

    async def _write_loop(self, client: _Client) -> None:
        writer = client.writer
        while True:
            item = await client.outbox.get()
            if item is None:
                return
            is_event, data = item
            if is_event:
                client.queued_events -= 1
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, RuntimeError):
                return

    async def _handle(self, client: _Client, raw: bytes) -> None:
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            client.send(protocol.failure(GENERIC_ERROR, f"JSON parse error, {exc}"))
            return
        if not isinstance(message, dict):
            client.send(protocol.failure(GENERIC_ERROR, "QMP input must be a JSON object"))
            return
        has_id, msg_id = "id" in message, message.get("id")
        try:
            name, arguments = self._parse(message)
            if not client.negotiated and name != "qmp_capabilities":
                raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'", COMMAND_NOT_FOUND)
            if client.negotiated and name == "qmp_capabilities":
                raise QmpError("Capabilities negotiation is already complete, command ignored", COMMAND_NOT_FOUND)
            command = self.table.lookup(name)
            self.table.check_arguments(command, arguments)
            if name == "qmp_capabilities":
                if arguments.get("enable"):
                    raise QmpError(f"Capability {arguments['enable'][0]!r} not available")
                client.negotiated = True
                result = {}
            elif command.blocking:
                result = await self.loop.run_in_executor(self._worker, self.table.run, command, arguments)
            else:
                result = self.table.run(command, arguments)
        except QmpError as exc:
            client.send(protocol.failure(exc.error_class, str(exc), msg_id, has_id))
            return
        client.send(protocol.success(result, msg_id, has_id))

    @staticmethod
    def _parse(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "exec-oob" in message:
            raise QmpError("QMP input member 'exec-oob' is not supported (no out-of-band capability)")
        for key in message:
            if key not in _TOP_LEVEL_KEYS:
                raise QmpError(f"QMP input member '{key}' is unexpected")
        name = message.get("execute")
        if not isinstance(name, str):
            raise QmpError("QMP input lacks member 'execute'" if name is None
                           else "QMP input member 'execute' must be a string")
        arguments = message.get("arguments", {})
        if not isinstance(arguments, dict):
            raise QmpError("QMP input member 'arguments' must be an object")
        return name, arguments


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (ConnectionError, asyncio.TimeoutError, RuntimeError):
        pass
