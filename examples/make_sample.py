#!/usr/bin/env python3
"""Writes sample-pairs.jsonl: templated question/answer pairs a tiny model learns within a
short CPU run (the answer follows from the question), from a fixed seed.

    python3 examples/make_sample.py            # rewrites examples/sample-pairs.jsonl
"""

import argparse
import json
import os
import random

CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Canada": "Ottawa", "Norway": "Oslo",
    "Greece": "Athens", "Ireland": "Dublin", "Poland": "Warsaw", "Austria": "Vienna", "Chile": "Santiago",
    "Cuba": "Havana", "Portugal": "Lisbon", "Sweden": "Stockholm", "Finland": "Helsinki", "India": "New Delhi",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "early": "late", "light": "dark",
    "open": "closed", "full": "empty", "high": "low", "strong": "weak", "young": "old", "wet": "dry",
    "loud": "quiet", "hard": "soft", "rich": "poor", "near": "far",
}
PLURALS = {
    "cat": "cats", "dog": "dogs", "box": "boxes", "child": "children", "mouse": "mice", "city": "cities",
    "leaf": "leaves", "foot": "feet", "tooth": "teeth", "bus": "buses", "knife": "knives", "baby": "babies",
    "man": "men", "woman": "women", "goose": "geese", "wolf": "wolves",
}
COLOURS = {
    "grass": "green", "the sky": "blue", "snow": "white", "coal": "black", "a banana": "yellow",
    "a tomato": "red", "an orange": "orange", "a plum": "purple", "chocolate": "brown", "a lemon": "yellow",
}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]


def pairs(rng, n):
    out = set()
    families = ["capital", "add", "opposite", "plural", "colour"]
    while len(out) < n:
        f = rng.choice(families)
        if f == "capital":
            c = rng.choice(sorted(CAPITALS))
            q = rng.choice(["What is the capital of {}?", "Which city is the capital of {}?"]).format(c)
            a = f"The capital of {c} is {CAPITALS[c]}."
        elif f == "add":
            x, y = rng.randint(0, 9), rng.randint(0, 9)
            q = rng.choice(["What is {} plus {}?", "Add {} and {}."]).format(x, y)
            a = f"{x} plus {y} is {x + y}, or {NUMBERS[x + y]}."
        elif f == "opposite":
            w = rng.choice(sorted(OPPOSITES))
            q = rng.choice(["What is the opposite of {}?", "Give the opposite of the word {}."]).format(w)
            a = f"The opposite of {w} is {OPPOSITES[w]}."
        elif f == "plural":
            w = rng.choice(sorted(PLURALS))
            q = rng.choice(["What is the plural of {}?", "How do you say more than one {}?"]).format(w)
            a = f"The plural of {w} is {PLURALS[w]}."
        else:
            t = rng.choice(sorted(COLOURS))
            q = rng.choice(["What colour is {}?", "Which colour is {} usually?"]).format(t)
            a = f"{t[0].upper() + t[1:]} is usually {COLOURS[t]}."
        out.add((q, a))
    items = sorted(out)
    rng.shuffle(items)
    return items


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(here, "sample-pairs.jsonl"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for q, a in pairs(rng, args.n):
            f.write(json.dumps({"prompt": q, "response": a}) + "\n")


if __name__ == "__main__":
    main()
