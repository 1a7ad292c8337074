"""Generated reviews in the upstream Amazon Reviews 2023 schema, for machines without the real rows."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

PHRASES = {
    1: ["broke after two days", "terrible quality", "waste of money", "arrived damaged", "never again"],
    2: ["disappointing", "cheaply made", "not as described", "stopped working", "poor fit"],
    3: ["it is okay", "average product", "does the job but", "mixed feelings", "fine for the price"],
    4: ["works well", "good value", "pretty happy with it", "solid build", "would recommend"],
    5: ["love it", "excellent quality", "perfect gift", "absolutely fantastic", "best purchase ever"],
}
FILLER = ["the box", "my kids", "this item", "shipping", "the color", "customer service", "the size"]


def review(rng: random.Random, product: int, rating: int) -> dict[str, object]:
    words = [rng.choice(PHRASES[rating]) for _ in range(rng.randint(1, 4))] + rng.sample(FILLER, 2)
    rng.shuffle(words)
    text = ". ".join(words).capitalize()
    if rng.random() < 0.15:
        text = text.replace(". ", ".<br /><br />", 1)
    if rng.random() < 0.02:
        text = f"[[VIDEOID:{rng.randrange(10**8):x}]] {text}"
    return {
        "rating": float(rating),
        "title": rng.choice(["", "Five Stars", "My thoughts", rng.choice(PHRASES[rating]).title()]),
        "text": text,
        "images": [],
        "asin": f"B{product:09d}",
        "parent_asin": f"P{product:09d}",
        "user_id": f"U{rng.randrange(10**6):06d}",
        "timestamp": 1_600_000_000_000 + rng.randrange(10**10),
        "helpful_vote": rng.randrange(5),
        "verified_purchase": rng.random() < 0.9,
    }


def write_category(path: Path, rows: int, products: int, seed: int) -> None:
    rng = random.Random(seed)
    ratings = rng.choices([1, 2, 3, 4, 5], weights=[14, 6, 9, 12, 59], k=rows)
    records = [review(rng, rng.randrange(products) + seed * 10_000, rating) for rating in ratings]
    for index in rng.sample(range(rows), 8):
        records[index]["text"] = ""  # real data has empty texts
    for index in rng.sample(range(rows), 30):
        records[index]["text"] = "Love it"  # and many exact duplicates
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_category(folder / "Subscription_Boxes.jsonl.gz", rows=3000, products=120, seed=1)
    write_category(folder / "Sports_and_Outdoors.sample.jsonl.gz", rows=2000, products=800, seed=2)
    return folder
