"""A generated question-answering corpus in SQuAD's record format, for training and testing LatentWire without
downloads: each context states a few random facts about distinct people, and the question asks for one of them, so
the answer can only come from reading the context (no fact is ever the same across the corpus by design)."""

import random
from typing import List

NAMES = ("Ana", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lukas",
         "Maya", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wendy", "Xavier", "Yara",
         "Zeno", "Amir", "Bea", "Carlos", "Dana", "Emil", "Fiona", "Gus", "Hana", "Ivan", "Jade", "Karl", "Lena",
         "Milo", "Nora")
CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Dakar", "Hanoi", "Riga", "Perth", "Porto", "Turin",
          "Bergen", "Nairobi", "Lyon", "Delhi", "Seoul", "Austin", "Zagreb", "Kyoto")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange", "brown", "grey", "pink", "silver")
THINGS = ("bicycle", "kite", "lamp", "violin", "umbrella", "teapot", "jacket", "backpack", "scooter", "clock",
          "camera", "guitar", "canoe", "sofa", "notebook")


def _facts(rng: random.Random, name: str) -> List[tuple]:
    """The three kinds of fact about `name`: (statement, question, answer)."""
    city, color, thing, age = rng.choice(CITIES), rng.choice(COLORS), rng.choice(THINGS), rng.randint(18, 89)
    return [(f"{name} lives in {city}.", f"Where does {name} live?", city),
            (f"{name} owns a {color} {thing}.", f"What color is {name}'s {thing}?", color),
            (f"{name} is {age} years old.", f"How old is {name}?", str(age))]


def generate_qa(num_records: int, seed: int = 0, facts_per_context: int = 4, prefix: str = "gen") -> List[dict]:
    """`num_records` records {"id", "title", "context", "question", "answers": [answer]}: a context of
    `facts_per_context` facts, each about another person, and a question about one of those facts."""
    if not 1 <= facts_per_context <= len(NAMES):
        raise ValueError(f"facts_per_context must lie in [1, {len(NAMES)}], got {facts_per_context}")
    rng = random.Random(seed)
    records = []
    for index in range(num_records):
        people = rng.sample(NAMES, facts_per_context)
        facts = [rng.choice(_facts(rng, name)) for name in people]
        _, question, answer = rng.choice(facts)
        records.append({"id": f"{prefix}-{seed}-{index}", "title": "generated",
                        "context": " ".join(fact[0] for fact in facts), "question": question, "answers": [answer]})
    return records
