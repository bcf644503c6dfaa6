"""Plumbing shared by the test apps in this directory (standard library only).

Each app is a stock `http.server.HTTPServer` (not ThreadingHTTPServer): it serves ONE connection
at a time, keep-alive (`protocol_version = "HTTP/1.1"`), as many small Python services do. A
client that holds a connection open keeps every other client waiting. The apps do not help
Hermes: no de-duplication, nothing read from Hermes' headers.

What this module adds to the stock server, and only that:

- `--listen HOST:PORT --file PATH`; a line containing `listening` on stdout once the socket
  accepts connections; `--threading`: a thread per connection instead (as
  `ThreadingHTTPServer`);
- SIGTERM exits (after the response in flight, if a request is being processed);
- no per-request log lines on stderr;
- bodies framed by Content-Length only: a request with Transfer-Encoding gets 501 and the
  connection is closed (Hermes never sends chunked bodies);
- every response is written with one `write`, with a Content-Length (TCP_NODELAY too), so a
  client waiting for the second half of a response never waits for a delayed ACK;
- HEAD is answered as GET, without the body.

Everything else (request-line and header parsing, `Expect: 100-continue`, HTTP/1.0 closing,
error pages for malformed requests) is the stock `BaseHTTPRequestHandler`'s.

Each script moves this directory to the END of `sys.path` before it imports anything else: the
directory holds `random.py`, which, searched first (Python puts a script's directory first),
would shadow the standard library's `random` module that `http.server` imports.
"""

import argparse
import http
import http.server
import signal
import socket
import socketserver
import sys

# The largest body read; more is refused (413) and the connection closed.
MAX_BODY = 64 << 20

_busy = False  # a request is being processed: SIGTERM waits for its response
_stop = False  # SIGTERM came while busy


def _on_sigterm(_signum, _frame):
    global _stop
    if _busy:
        _stop = True
    else:
        sys.exit(0)


class Handler(http.server.BaseHTTPRequestHandler):
    """Base of the apps' handlers: subclasses implement `answer(body)`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    @classmethod
    def open(cls, path):
        """Loads the app's state from `path` (once, before serving)."""

    def answer(self, body):
        """Returns `(status, body)` or `(status, body, [(name, value), ...])` for the request
        (`self.command`, `self.path`, `self.headers`) and its `body`."""
        raise NotImplementedError

    def log_message(self, format, *args):  # noqa: A002 - the stock signature
        pass

    def __getattr__(self, name):
        # Every method goes to `dispatch` (the stock handler answers 501 to a method it has no
        # `do_` attribute for).
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    def dispatch(self):
        global _busy
        body = self.read_body()
        if body is None:
            return
        _busy = True
        try:
            answer = self.answer(body)
            self.respond(*answer)
        finally:
            _busy = False
        if _stop:
            sys.exit(0)

    def read_body(self):
        """The body, by Content-Length; `None` (after answering) if it cannot be read."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            self.respond(501, b"Transfer-Encoding is not supported: send a Content-Length\n")
            return None
        lengths = {value.strip() for value in self.headers.get_all("Content-Length", [])}
        if not lengths:
            return b""
        length = lengths.pop()
        if lengths or not (length.isascii() and length.isdigit()):
            self.close_connection = True
            self.respond(400, b"bad Content-Length\n")
            return None
        length = int(length)
        if length > MAX_BODY:
            self.close_connection = True
            self.respond(413, b"body too large\n")
            return None
        body = self.rfile.read(length)
        if len(body) < length:  # the client closed mid-body
            self.close_connection = True
            return None
        return body

    def respond(self, status, body=b"", headers=()):
        """Writes the response with one write."""
        lines = [
            f"{self.protocol_version} {status} {http.HTTPStatus(status).phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
        ]
        if status == 204 or status == 304 or 100 <= status < 200:
            body = b""
        else:
            lines.append("Content-Type: text/plain")
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)


class Server(http.server.HTTPServer):
    request_queue_size = 128

    def server_bind(self):
        # The stock server_bind looks its own name up (socket.getfqdn), which can hang on DNS in
        # a network namespace without one. Nothing here needs the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class ThreadingServer(socketserver.ThreadingMixIn, Server):
    daemon_threads = True


def _host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def main(name, handler, description):
    """Parses `--listen` and `--file`, opens the state, serves until SIGTERM."""
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT")
    parser.add_argument("--file", required=True, metavar="PATH", help="the app's state")
    parser.add_argument(
        "--threading", action="store_true", help="a thread per connection, not one at a time"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_sigterm)
    handler.open(args.file)
    server_class = ThreadingServer if args.threading else Server
    if ":" in args.listen[0]:
        server_class.address_family = socket.AF_INET6
    server = server_class(args.listen, handler)
    host, port = server.server_address[:2]
    print(f"{name} listening on {host}:{port}, state in {args.file}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
