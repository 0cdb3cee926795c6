"""Writes distill_corpus.txt: the hand-written sentences of distill_corpus_handwritten.txt plus 220 sentences
drawn (seeded, so the file is reproducible) from a dozen sentence templates over everyday topics.

The templates vary the structure (reports, questions, instructions, opinions, short notes), the length and the
vocabulary, so that the corpus covers what a sentence-embedding model sees without repeating one shape.
The held-out file (distill_heldout.txt) is written by hand and shares neither sentences nor templates.
"""
import pathlib
import random

HERE = pathlib.Path(__file__).parent

PEOPLE = ["My brother", "The new teacher", "Our neighbour", "A colleague of mine", "The landlord", "My aunt",
          "The project lead", "A local farmer", "The night nurse", "Our coach", "The shop owner", "My flatmate"]
PLACES = ["the station", "the harbour", "the old town", "the airport", "the supermarket", "the park",
          "the town hall", "the university", "the beach", "the hospital", "the stadium", "the market square"]
TIMES = ["on Monday morning", "last night", "every weekend", "before lunch", "in early spring", "after the storm",
         "during the holidays", "at around six", "two days ago", "later this month", "most evenings", "yesterday"]
THINGS = ["bicycle", "washing machine", "phone charger", "garden hose", "kitchen tap", "car battery", "laptop",
          "front door lock", "coffee grinder", "heating system", "printer", "lawn mower"]
FOODS = ["mushroom risotto", "vegetable curry", "apple crumble", "fish tacos", "tomato soup", "banana bread",
         "chicken stew", "lemon tart", "pea and mint salad", "pancakes", "bean chilli", "roast potatoes"]
TOPICS = ["climate policy", "the local elections", "public transport", "school funding", "remote work",
          "the price of energy", "housing", "the new stadium", "water quality", "artificial intelligence",
          "the football season", "the heatwave"]
FEELINGS = ["surprisingly good", "a bit disappointing", "better than expected", "far too expensive", "excellent",
            "confusing at first", "worth the wait", "rather noisy", "very relaxing", "overrated"]
VERBS_FIX = ["repaired", "replaced", "cleaned", "took apart", "finally fixed", "gave up on"]
NUMBERS = ["two", "three", "five", "seven", "ten", "twelve", "fifteen", "twenty"]
UNITS = ["minutes", "hours", "days", "weeks"]
ACTIVITIES = ["go running", "learn the guitar", "start a vegetable garden", "take up swimming", "read more books",
              "cycle to work", "cook at home more often", "visit the mountains", "learn Spanish", "volunteer"]

TEMPLATES = [
    lambda r: f"{r.choice(PEOPLE)} {r.choice(VERBS_FIX)} the {r.choice(THINGS)} {r.choice(TIMES)}.",
    lambda r: f"Meet me outside {r.choice(PLACES)} {r.choice(TIMES).replace('last night', 'tonight')}, "
              f"and bring the {r.choice(THINGS)} if you can.",
    lambda r: f"Does anyone know how long it takes to get from {r.choice(PLACES)} to {r.choice(PLACES)} by bus?",
    lambda r: f"The {r.choice(FOODS)} at the place near {r.choice(PLACES)} was {r.choice(FEELINGS)}.",
    lambda r: f"For the {r.choice(FOODS)}, cook everything on a low heat for {r.choice(NUMBERS)} "
              f"{r.choice(['minutes', 'more minutes'])} and season to taste.",
    lambda r: f"Residents met {r.choice(TIMES)} to discuss {r.choice(TOPICS)}, but no decision was reached.",
    lambda r: f"I've decided to {r.choice(ACTIVITIES)} this year.",
    lambda r: f"According to a recent survey, most people think {r.choice(TOPICS)} matters more than "
              f"{r.choice(TOPICS)}.",
    lambda r: f"The queue at {r.choice(PLACES)} was {r.choice(NUMBERS)} {r.choice(['minutes', 'people'])} long, "
              f"which is {r.choice(['ridiculous', 'normal for a Saturday', 'the worst I have seen'])}.",
    lambda r: f"Why does my {r.choice(THINGS)} keep making a strange noise {r.choice(TIMES)}?",
    lambda r: f"{r.choice(PEOPLE)} says the film about {r.choice(TOPICS)} is {r.choice(FEELINGS)}.",
    lambda r: f"Reminder: the meeting about {r.choice(TOPICS)} moved to {r.choice(PLACES)}.",
    lambda r: f"It took {r.choice(NUMBERS)} {r.choice(UNITS)} to get the {r.choice(THINGS)} working again, "
              f"and {r.choice(PEOPLE).lower()} still isn't happy with it.",
    lambda r: f"Thanks for the {r.choice(FOODS)}!",
]


def main(templated: int = 220, seed: int = 2024) -> None:
    rng = random.Random(seed)
    out = (HERE / "distill_corpus_handwritten.txt").read_text().splitlines()
    seen = set(out)
    target = len(out) + templated
    while len(out) < target:
        s = rng.choice(TEMPLATES)(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    (HERE / "distill_corpus.txt").write_text("\n".join(out) + "\n")
    print(f"wrote {len(out)} sentences")


if __name__ == "__main__":
    main()
