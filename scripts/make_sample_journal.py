#!/usr/bin/env python3
"""Writes data/sample/journal.txt: a narrow, formulaic "personal" corpus (one beekeeper's hive
inspection log) for fine-tuning experiments. Deterministic: the same file every run.

Every entry follows one template with varied values, so a model can learn the format and the
names quickly; held-out entries then show a large perplexity drop, while general English (see
scripts/experiment-defaults.sh) shows whether the model forgets.
"""
import random
from datetime import date, timedelta
from pathlib import Path

HIVES = ["Saga", "Birch", "Lantern", "Otter", "Clover", "Juniper"]
WEATHER = ["sunny", "overcast", "light rain", "windy", "warm and still", "cool and bright", "humid"]
TEMPER = ["calm", "calm", "a little defensive", "very gentle", "busy but calm", "nervous"]
FORAGE = ["heather", "clover", "willow", "rapeseed", "lime trees", "bramble", "dandelion", "rowan"]
ACTIONS = [
    "Added a super.",
    "Removed two frames of honey.",
    "Swapped a brood frame from {other}.",
    "Cleaned the floor board.",
    "Fed one litre of syrup.",
    "Checked for varroa: {mites} mites on the board.",
    "Marked the queen in blue.",
    "Nothing to do; closed up quickly.",
]


def entry(rng: random.Random, day: date) -> str:
    hive = rng.choice(HIVES)
    other = rng.choice([h for h in HIVES if h != hive])
    action = rng.choice(ACTIONS).format(other=other, mites=rng.randint(0, 14))
    queen = "Queen seen" if rng.random() < 0.6 else "Queen not seen, but fresh eggs"
    return (
        f"{day.isoformat()}, hive {hive}. Weather {rng.choice(WEATHER)}, {rng.randint(9, 24)} degrees. "
        f"{queen}. {rng.randint(3, 10)} frames of brood, temper {rng.choice(TEMPER)}. "
        f"Bees working the {rng.choice(FORAGE)}. {action} "
        f"Next visit in {rng.choice([5, 7, 7, 9, 10])} days. Pepper waited by the gate."
    )


def main() -> None:
    rng = random.Random(20260428)
    day = date(2025, 4, 2)
    entries = []
    for _ in range(320):
        entries.append(entry(rng, day))
        day += timedelta(days=rng.choice([0, 1, 1, 2]))
    out = Path(__file__).resolve().parent.parent / "data" / "sample" / "journal.txt"
    out.write_text("\n\n".join(entries) + "\n", encoding="utf-8")
    print(f"{out}: {len(entries)} entries")


if __name__ == "__main__":
    main()
