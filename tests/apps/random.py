#!/usr/bin/env python3
"""random.py --listen HOST:PORT --file PATH: append.py, but not deterministic.

Every response body also carries a number the process drew at random when it started
(` random=<16 hex digits>` before the final line break): replicas that run it answer
differently to the same requests, which divergence detection should notice. The file is the
same as append.py's.
"""

import os
import sys

# This very file would shadow the standard library's `random` (imported by http.server) if its
# directory were searched first: search it last.
HERE = os.path.dirname(os.path.realpath(__file__))
sys.path = [p for p in sys.path if os.path.realpath(p or os.curdir) != HERE] + [HERE]

import append  # noqa: E402
import common  # noqa: E402

NONCE = b" random=" + os.urandom(8).hex().encode()


class Random(append.Append):
    def respond(self, status, body=b"", headers=()):
        body = body.removesuffix(b"\n") + NONCE + b"\n"
        super().respond(status, body, headers)


if __name__ == "__main__":
    common.main("random.py", Random, __doc__)
