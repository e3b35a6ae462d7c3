"""A TCP proxy in front of libvirtd's loopback TCP listener that loses the
reply to one RPC call and drops the client's connection: what a client sees
when libvirtd goes away right after carrying the call out (a restart at the
wrong instant), made exact. libvirtd itself is not touched.

    with LosingProxy(BACKUP_BEGIN) as proxy:
        uri = proxy.uri                  # qemu+tcp://127.0.0.1:<port>/system
        ...                              # the first backupBegin through it is
        assert proxy.lost.is_set()       # done by libvirtd, its reply lost

Every later connection (the client's reconnect) is passed through untouched.
libvirt's RPC packets: a 4-byte big-endian length (itself included), then
program, version, procedure, type, serial, status (4 bytes each).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

REMOTE_PROGRAM = 0x20008086
# Procedure numbers of libvirt's remote_protocol.x (part of its stable wire protocol).
ABORT_JOB = 164
BACKUP_BEGIN = 421
CALL, REPLY = 0, 1
LIBVIRTD_TCP = ("127.0.0.1", 16509)


def _read_packet(source: socket.socket) -> bytes | None:
    """One whole packet, or None at the end of the stream."""
    data = b""
    wanted = 4
    while len(data) < wanted:
        chunk = source.recv(wanted - len(data))
        if not chunk:
            return None
        data += chunk
        if len(data) == 4:
            (wanted,) = struct.unpack(">I", data)
    return data


def _header(packet: bytes) -> tuple[int, int, int, int]:
    """(program, procedure, type, serial)."""
    program, _version, procedure, kind, serial = struct.unpack(">IIIII", packet[4:24])
    return program, procedure, kind, serial


class LosingProxy:
    def __init__(self, procedure: int, upstream: tuple[str, int] = LIBVIRTD_TCP) -> None:
        self.procedure = procedure
        self.upstream = upstream
        self.lost = threading.Event()  # set once the reply was lost
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # to notice `close` while waiting for clients
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    @property
    def uri(self) -> str:
        port = self._listener.getsockname()[1]
        return f"qemu+tcp://127.0.0.1:{port}/system"

    def __enter__(self) -> LosingProxy:
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="losing-proxy")
        self._acceptor.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._closed.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            for sock in self._open:  # wakes their relays, which close them
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._open |= {client, server}
            pending: dict[str, int] = {}  # the serial of the call whose reply to lose
            for source, sink, calls in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._relay, args=(source, sink, calls, pending), daemon=True
                ).start()

    def _relay(
        self, source: socket.socket, sink: socket.socket, calls: bool, pending: dict[str, int]
    ) -> None:
        """Copy packets from `source` to `sink` until either end closes, or the
        reply to lose comes by; then end both directions. Each socket is the
        source of one relay, which closes it."""
        with contextlib.suppress(OSError):
            while (packet := _read_packet(source)) is not None:
                program, procedure, kind, serial = _header(packet)
                if program == REMOTE_PROGRAM:
                    if calls and kind == CALL and procedure == self.procedure:
                        if not self.lost.is_set() and "serial" not in pending:
                            pending["serial"] = serial
                    elif not calls and kind == REPLY and pending.get("serial") == serial:
                        self.lost.set()
                        break  # the reply is dropped, and the connection with it
                sink.sendall(packet)
        with self._lock:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.discard(source)
            source.close()
