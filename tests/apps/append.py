#!/usr/bin/env python3
"""append.py --listen HOST:PORT --file PATH: the plain append-only app users have.

- POST (any path): appends the body as one line to the file (append mode, one write, flushed)
  and answers `201` with the line number (1-based) as the body;
- GET /count: the number of lines;
- GET /line/N: line N, or 404;
- GET /admin: `200` to a client on 127.0.0.1 only, `403` to anyone else (as apps that trust
  loopback do).

Nothing is de-duplicated: a request sent twice appends twice. Bodies with a line break get 400.
The file is the state: a restarted app continues it (a torn last line, from a crash mid-write,
is ended with a line break and counts as a line). One connection at a time (see common.py).
"""

import os
import sys

# This directory holds random.py, which would shadow the standard library's `random` (imported by
# http.server): search it last.
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path = [p for p in sys.path if os.path.realpath(p or os.curdir) != HERE] + [HERE]

import common  # noqa: E402


class Append(common.Handler):
    lines = []
    file = None

    @classmethod
    def open(cls, path):
        with open(path, "ab+") as f:
            f.seek(0)
            data = f.read()
        cls.file = open(path, "ab")
        if data and not data.endswith(b"\n"):
            cls.file.write(b"\n")
            cls.file.flush()
            data += b"\n"
        cls.lines = data.split(b"\n")[:-1]

    def answer(self, body):
        path = self.path
        if self.command == "POST":
            if b"\n" in body or b"\r" in body:
                return 400, b"the body is one line: no line breaks\n"
            self.file.write(body + b"\n")
            self.file.flush()
            self.lines.append(body)
            n = len(self.lines)
            return 201, b"%d\n" % n, [("Location", f"/line/{n}")]
        if self.command in ("GET", "HEAD"):
            if path == "/admin":
                if self.client_address[0] in ("127.0.0.1", "::ffff:127.0.0.1"):
                    return 200, b"admin pages\n"
                return 403, b"admin pages are for local clients only\n"
            if path == "/count":
                return 200, b"%d\n" % len(self.lines)
            n = path.removeprefix("/line/")
            if n != path and n.isascii() and n.isdigit() and 1 <= int(n) <= len(self.lines):
                return 200, self.lines[int(n) - 1]
            return 404, b"no such line; try POST, GET /count, GET /line/N\n"
        return 405, b"use POST, or GET /count, GET /line/N\n", [("Allow", "GET, HEAD, POST")]


if __name__ == "__main__":
    common.main("append.py", Append, __doc__)
