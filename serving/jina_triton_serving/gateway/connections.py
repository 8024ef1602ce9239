"""The gateway's HTTP connections, bounded before any request reaches the app: at most
`max_connections` open (more are answered 503 and closed at once), and a client that does
not finish its request headers within `header_timeout` seconds is disconnected (uvicorn
itself only times out idle keep-alive connections)."""
from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_BODY = b'{"error":{"message":"too many open connections; retry","type":"server_error","param":null,"code":null}}'
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
           b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


def bounded_protocol(max_connections: int, header_timeout: float) -> type:
    class BoundedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            self._header_timer = None
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(REFUSED)
                transport.close()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return BoundedProtocol
