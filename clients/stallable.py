"""A customer socket driven by hand, which can stop reading altogether: what a stalled phone looks like to
the server. Used by the transport tests and ``bench.stalled_reader``.

websockets' sans-I/O client over a plain non-blocking TCP socket with a small receive buffer: frames are read
only when :meth:`StallableCustomer.read_some` is called, so between calls the server's writes back up into
the kernel buffers and then into its own.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import wire
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from clients.ws import ws_url

#: Receive buffer of the socket (the kernel may round it up): small, so the server's writes back up soon.
RECEIVE_BUFFER = 4096


class StallableCustomer:
    """A customer socket driven by hand (websockets' sans-I/O client over a plain TCP socket with a small
    receive buffer): it reads only when told to, so it can stop reading altogether."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol):
        self.sock, self.protocol = sock, protocol
        self.frames: list[dict] = []

    @classmethod
    async def connect(cls, base_url: str, jwt: str) -> "StallableCustomer":
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setblocking(False)
        protocol = ClientProtocol(parse_uri(ws_url(base_url, "/v1/ws/customer", jwt)))
        await loop.sock_connect(sock, sock_address(base_url))
        protocol.send_request(protocol.connect())
        customer = cls(sock, protocol)
        await customer._flush()
        while protocol.handshake_exc is None and protocol.state is State.CONNECTING:
            await customer.read_some(5.0)
        assert protocol.handshake_exc is None, protocol.handshake_exc
        return customer

    async def _flush(self) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, b"".join(self.protocol.data_to_send()))

    async def send(self, message: dict) -> None:
        self.protocol.send_binary(wire.encode(message))
        await self._flush()

    async def read_some(self, timeout_s: float) -> bool:
        """Read what has arrived; False once the connection is closed (or reset)."""
        try:
            data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), timeout_s)
        except ConnectionResetError:
            return False
        if not data:
            self.protocol.receive_eof()
            return False
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                self.frames.append(wire.load(event.data))
        return True

    async def read_until(self, done, timeout_s: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not done():
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0 and await self.read_some(left), f"condition not met; frames: {self.frames[-3:]}"

    def statuses(self) -> list[int]:
        return [f["seq"] for f in self.frames if f.get("type") == "status"]

    def established(self) -> bool:
        """Whether the TCP connection is still open both ways (not reset, not closed by the server)."""
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return struct.unpack("B", info[:1])[0] == 1  # TCP_ESTABLISHED

    def close(self) -> None:
        self.sock.close()


def sock_address(base_url: str) -> tuple[str, int]:
    host, port = base_url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)
