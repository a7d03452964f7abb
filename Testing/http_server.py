"""A real HTTP server on 127.0.0.1 for download tests: Range support and scripted misbehaviour.

Each path serves a `Route`: the bytes to send and how to misbehave (an error status, ignoring
Range headers, closing the connection after a number of body bytes). Every request's headers
are recorded so tests can assert that a resume really sent a Range header.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional


@dataclasses.dataclass
class Route:
    """What one path serves.

    Attributes:
        body: the whole file.
        status: an HTTP error status to answer instead of the file (e.g. 404).
        honour_range: False makes the server answer 200 with the whole file to Range requests.
        cut_at: close the connection after sending this many body bytes...
        cut_times: ...in this many responses (then serve normally); None cuts every response.
        chunk_delay: seconds to pause after each 64 KiB of body (a slow link, for overlapping clients).
        content_length: announce this Content-Length whatever is sent (servers that under-announce).
        send_length: False sends no Content-Length at all (the size is unknown until the end).
        range_shift: answer Range requests with a Content-Range this many bytes off (a broken resume).
    """

    body: bytes
    status: int = 200
    honour_range: bool = True
    cut_at: Optional[int] = None
    cut_times: Optional[int] = 1
    chunk_delay: float = 0.0
    content_length: Optional[int] = None
    send_length: bool = True
    range_shift: int = 0


class FileServer:
    """`with FileServer() as server: server.routes["/m.pth"] = Route(data); server.url("/m.pth")`."""

    def __init__(self) -> None:
        self.routes: Dict[str, Route] = {}
        self.requests: List[Dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _make_handler(owner: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: closing it ends a response early

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            owner.requests.append({"path": self.path, **dict(self.headers)})
            route = owner.routes.get(self.path)
            if route is None or route.status != 200:
                self.send_error(404 if route is None else route.status)
                return
            start, status = 0, 200
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and route.honour_range:
                start, status = int(match.group(1)), 206
                if start >= len(route.body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(route.body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            payload = route.body[start:]
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            announced = len(payload) if route.content_length is None else route.content_length
            if route.send_length:
                self.send_header("Content-Length", str(announced))
            if status == 206:
                shown = start + route.range_shift
                self.send_header("Content-Range", f"bytes {shown}-{len(route.body) - 1}/{len(route.body)}")
            self.end_headers()
            if route.cut_at is not None and route.cut_times != 0:
                payload = payload[: route.cut_at]
                if route.cut_times is not None:
                    route.cut_times -= 1
            try:
                for start in range(0, len(payload), 1 << 16):
                    self.wfile.write(payload[start: start + (1 << 16)])
                    self.wfile.flush()
                    time.sleep(route.chunk_delay)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (an under-announced length, a full disk): part of the test

        def log_message(self, *args) -> None:
            pass

    return Handler
