#!/usr/bin/env python3
"""record.py --listen HOST:PORT --file PATH: records every request, byte for byte.

For each request it parses, it appends one record to the file: `<length>\\n<bytes>\\n`, where
the bytes are the request line, the header block (up to and including the empty line) and the
body (Content-Length bytes), exactly as they arrived. Then it answers `200` with
`record <count>\\n`, the count of records in the file.

The header block is read from the socket by this script, then handed to the stock parser, so the
record is what was received, not the parser's idea of it. Bodies are framed by Content-Length
only: a request with Transfer-Encoding is refused (501) and not recorded. One connection at a
time (see common.py). A torn last record (a crash mid-write) is cut off at start.
"""

import io
import os
import sys

# This directory holds random.py, which would shadow the standard library's `random` (imported by
# http.server): search it last.
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path = [p for p in sys.path if os.path.realpath(p or os.curdir) != HERE] + [HERE]

import common  # noqa: E402

# http.client.parse_headers' limits: longer lines or more headers are refused (431).
MAX_LINE = 65536
MAX_HEADERS = 100


def complete_records(data):
    """The number of complete records at the start of `data`, and the bytes they take."""
    count = at = 0
    while True:
        newline = data.find(b"\n", at)
        if newline < 0 or not data[at:newline].isdigit():
            return count, at
        end = newline + 1 + int(data[at:newline])
        if end + 1 > len(data) or data[end : end + 1] != b"\n":
            return count, at
        count, at = count + 1, end + 1


class Record(common.Handler):
    count = 0
    file = None

    @classmethod
    def open(cls, path):
        with open(path, "ab+") as f:
            f.seek(0)
            cls.count, good = complete_records(f.read())
            f.truncate(good)
        cls.file = open(path, "ab")

    def parse_request(self):
        # Read the header block off the socket as the stock parser would (line by line, same
        # limits), keep it, and let the stock parser parse that copy.
        lines = []
        while len(lines) <= MAX_HEADERS:
            line = self.rfile.readline(MAX_LINE + 1)
            lines.append(line)
            if len(line) > MAX_LINE or line in (b"\r\n", b"\n", b""):
                break
        self.raw_headers = b"".join(lines)
        socket_file, self.rfile = self.rfile, io.BytesIO(self.raw_headers)
        try:
            return super().parse_request()
        finally:
            self.rfile = socket_file

    def answer(self, body):
        raw = self.raw_requestline + self.raw_headers + body
        self.file.write(b"%d\n%s\n" % (len(raw), raw))
        self.file.flush()
        type(self).count += 1
        return 200, b"record %d\n" % self.count


if __name__ == "__main__":
    common.main("record.py", Record, __doc__)
