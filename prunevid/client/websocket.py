"""A minimal RFC 6455 websocket client over the standard library (what `prunevid submit` listens to ComfyUI with).

Text and binary messages, fragmentation, ping/pong and close; no extensions. `server` is anything with scheme,
host, port, prefix and display attributes (api.Server).
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import time


def reason(err) -> str:
    """A short human reason for a socket or urllib error."""
    r = getattr(err, "reason", err)
    if isinstance(r, ConnectionRefusedError):
        return "connection refused"
    if isinstance(r, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(r, socket.gaierror):
        return "unknown host"
    if isinstance(r, (ConnectionResetError, BrokenPipeError)):
        return "connection reset"
    return str(r) or type(r).__name__


class WebSocketClosed(Exception):
    pass


class WebSocket:
    """A minimal RFC 6455 client: text and binary messages, fragmentation, ping/pong, close. No extensions."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, server, path: str, timeout: float = 30.0):
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        try:
            if server.scheme == "https":
                self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=server.host)
            key = base64.b64encode(os.urandom(16))
            host = server.display if server.port not in (80, 443) else server.host
            request = (f"GET {server.prefix}{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n")
            self.sock.sendall(request.encode())
            self.buf = bytearray()
            while b"\r\n\r\n" not in self.buf:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise WebSocketClosed("the server closed the connection during the websocket handshake")
                self.buf += chunk
            head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
            self.buf = bytearray(rest)
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ", 2)
            if len(status) < 2 or status[1] != "101":
                raise WebSocketClosed(f"no websocket at {path.split('?')[0]}: the server answered {lines[0]!r}")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            expected = base64.b64encode(hashlib.sha1(key + self.GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != expected:
                raise WebSocketClosed("bad websocket handshake (Sec-WebSocket-Accept does not match)")
        except BaseException:
            self.sock.close()
            raise
        self.fragments = None       # (opcode, bytearray) of a message being reassembled
        self.closed = False

    def _frame(self):
        """Parse one frame from the buffer: (fin, opcode, payload), or None if it is not complete yet."""
        b = self.buf
        if len(b) < 2:
            return None
        fin, opcode, masked, n = b[0] & 0x80, b[0] & 0x0F, b[1] & 0x80, b[1] & 0x7F
        i = 2
        if n == 126:
            if len(b) < 4:
                return None
            n, i = struct.unpack(">H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, i = struct.unpack(">Q", b[2:10])[0], 10
        mask = None
        if masked:
            if len(b) < i + 4:
                return None
            mask, i = bytes(b[i:i + 4]), i + 4
        if len(b) < i + n:
            return None
        payload = bytes(b[i:i + n])
        del b[:i + n]
        if mask:
            payload = bytes(c ^ mask[k % 4] for k, c in enumerate(payload))
        return bool(fin), opcode, payload

    def send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(header + mask + bytes(c ^ mask[k % 4] for k, c in enumerate(payload)))

    def recv(self, timeout: float):
        """The next message as (is_text, payload), or None when nothing arrived within timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._frame()
            if frame is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    return None
                except OSError as e:
                    self.closed = True
                    raise WebSocketClosed(reason(e)) from None
                if not chunk:
                    self.closed = True
                    raise WebSocketClosed("the server closed the connection")
                self.buf += chunk
                continue
            fin, opcode, payload = frame
            if opcode == 0x8:                                    # close
                try:
                    self.send(0x8, payload[:2])
                except OSError:
                    pass
                self.closed = True
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                raise WebSocketClosed(f"the server closed the websocket (code {code})")
            if opcode == 0x9:                                    # ping
                try:
                    self.send(0xA, payload)
                except OSError as e:
                    self.closed = True
                    raise WebSocketClosed(reason(e)) from None
                continue
            if opcode == 0xA:                                    # pong
                continue
            if opcode in (0x1, 0x2):
                if fin:
                    return opcode == 0x1, payload
                self.fragments = (opcode, bytearray(payload))
                continue
            if opcode == 0x0 and self.fragments is not None:     # continuation
                self.fragments[1].extend(payload)
                if fin:
                    op, data = self.fragments
                    self.fragments = None
                    return op == 0x1, bytes(data)
                continue
            raise WebSocketClosed(f"unexpected websocket frame (opcode {opcode})")

    def close(self) -> None:
        if not self.closed:
            try:
                self.send(0x8, struct.pack(">H", 1000))
            except OSError:
                pass
            self.closed = True
        self.sock.close()
