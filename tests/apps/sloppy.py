#!/usr/bin/env python3
"""sloppy.py --listen HOST:PORT --file PATH [--threading]: `append.py` with a common bug.

- POST /ping: answers `200 pong` without reading the request's body, and keeps the connection
  (a handler that never looks at the body, as many 401 or 404 handlers do). Whatever the client
  sends next on that connection is read after the unread body, and taken for a request, badly;
- everything else as `append.py` (POST appends its body as a line, GET /count, GET /line/N).

One connection at a time (see common.py), or, with `--threading`, a thread per connection (as
`ThreadingHTTPServer`, what `python3 -m http.server` runs).
"""

import os
import sys

# This directory holds random.py, which would shadow the standard library's `random` (imported by
# http.server): search it last.
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path = [p for p in sys.path if os.path.realpath(p or os.curdir) != HERE] + [HERE]

import append  # noqa: E402
import common  # noqa: E402


class Sloppy(append.Append):
    def dispatch(self):
        if self.command == "POST" and self.path == "/ping":
            self.respond(200, b"pong\n")
            return
        super().dispatch()


if __name__ == "__main__":
    common.main("sloppy.py", Sloppy, __doc__)
