"""Cuts the bundled journal into N consecutive shards (each device or node sees different
months) and holds out the last sixth of each: shard-D.txt, held-out-D.txt, and held-out.txt
(the union), in WORK. Used by scripts/demo-federated.sh and scripts/demo-flower.sh.

  python3 scripts/make_shards.py WORK N
"""

import sys

work, n = sys.argv[1], int(sys.argv[2])
entries = [e for e in open("data/sample/journal.txt").read().split("\n\n") if e.strip()]
per = len(entries) // n
held_all = []
for d in range(n):
    shard = entries[d * per : (d + 1) * per]
    held = max(1, len(shard) // 6)
    open(f"{work}/shard-{d}.txt", "w").write("\n\n".join(shard[:-held]))
    open(f"{work}/held-out-{d}.txt", "w").write("\n\n".join(shard[-held:]))
    held_all += shard[-held:]
open(f"{work}/held-out.txt", "w").write("\n\n".join(held_all))
