#!/usr/bin/env python3
"""register.py --listen HOST:PORT --file PATH: one register.

- PUT /register with a body: sets the register (writes the file), 204;
- GET /register: 200 with the value (empty if never set);
- GET /state: the whole state (the value); PUT /state: replaces it, 204. For snapshot hooks:
  `curl -sf -o "$HERMES_SNAPSHOT" http://127.0.0.1:8080/state` and
  `curl -sf -X PUT --data-binary @"$HERMES_SNAPSHOT" http://127.0.0.1:8080/state`.

It serves one connection at a time (see common.py), and that is the point: a client that holds
a second connection to it open while it waits for an answer on the first deadlocks it.
"""

import os
import sys

# This directory holds random.py, which would shadow the standard library's `random` (imported by
# http.server): search it last.
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path = [p for p in sys.path if os.path.realpath(p or os.curdir) != HERE] + [HERE]

import common  # noqa: E402


class Register(common.Handler):
    file = None
    value = b""

    @classmethod
    def open(cls, path):
        cls.file = path
        try:
            with open(path, "rb") as f:
                cls.value = f.read()
        except FileNotFoundError:
            cls.set(b"")

    @classmethod
    def set(cls, value):
        with open(cls.file, "wb") as f:
            f.write(value)
        cls.value = value

    def answer(self, body):
        if self.path not in ("/register", "/state"):
            return 404, b"try GET or PUT /register, GET or PUT /state\n"
        if self.command in ("GET", "HEAD"):
            return 200, self.value
        if self.command == "PUT":
            self.set(body)
            return 204, b""
        return 405, b"use GET or PUT\n", [("Allow", "GET, HEAD, PUT")]


if __name__ == "__main__":
    common.main("register.py", Register, __doc__)
