"""Child process for the persistence test: saves a growing state as fast as it can, printing the
counter of every save that returned (acknowledged). Usage: state_writer.py STATE_DIR"""

from __future__ import annotations

import sys

import msgpack

from mbms.node.persistence import StateStore

store = StateStore(sys.argv[1], 1)
res = store.load()
n = msgpack.unpackb(res.data)["n"] if res.data else 0
print(f"start {n} {res.status}", flush=True)
while True:
    n += 1
    store.event("tick", n=n, pad="x" * 200)
    store.save(msgpack.packb({"n": n, "pad": bytes(n % 251 for _ in range(20000))}))
    print(f"saved {n}", flush=True)
