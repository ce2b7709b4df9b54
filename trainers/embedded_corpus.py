"""The embedded default corpus: seeded, English-like sentences the project generates itself (no downloads).

A small probabilistic grammar with number agreement, so that a model trained on it has something real to learn:
determiner-noun agreement (`this dog` / `these dogs`), subject-verb agreement across prepositional and relative-clause
distractors (`the keys near the cabinet are ...`), adjectives, transitive and intransitive verbs, and sentence-level
coordination. The same seed always gives the same corpus.
"""

import random
from typing import List

NOUNS = [  # (singular, plural)
    ("dog", "dogs"), ("cat", "cats"), ("teacher", "teachers"), ("student", "students"), ("doctor", "doctors"),
    ("child", "children"), ("man", "men"), ("woman", "women"), ("bird", "birds"), ("farmer", "farmers"),
    ("key", "keys"), ("box", "boxes"), ("book", "books"), ("car", "cars"), ("city", "cities"),
    ("river", "rivers"), ("song", "songs"), ("letter", "letters"), ("garden", "gardens"), ("window", "windows"),
    ("painter", "painters"), ("king", "kings"), ("horse", "horses"), ("friend", "friends"), ("mouse", "mice"),
]
ANIMATE = {"dog", "cat", "teacher", "student", "doctor", "child", "man", "woman", "bird", "farmer", "painter",
           "king", "horse", "friend", "mouse"}
INTRANSITIVE = [("sleeps", "sleep"), ("runs", "run"), ("waits", "wait"), ("laughs", "laugh"), ("sings", "sing"),
                ("falls", "fall"), ("arrives", "arrive"), ("works", "work")]
TRANSITIVE = [("sees", "see"), ("likes", "like"), ("finds", "find"), ("watches", "watch"), ("helps", "help"),
              ("visits", "visit"), ("remembers", "remember"), ("follows", "follow")]
COPULA = ("is", "are")
ADJECTIVES = ["old", "young", "small", "large", "quiet", "happy", "red", "green", "famous", "clever", "tired", "new"]
PREPOSITIONS = ["near", "behind", "beside", "under", "with", "above"]
DETERMINERS = {"sg": ["the", "a", "this", "that", "every"], "pl": ["the", "these", "those", "some", "many"]}
ADVERBS = ["today", "again", "quietly", "often", "now", "yesterday"]


class SentenceGenerator:
    """Draws sentences from the grammar with its own `random.Random(seed)`."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def noun_phrase(self, number: str, animate: bool = False, allow_modifier: bool = True) -> str:
        pool = [n for n in NOUNS if n[0] in ANIMATE] if animate else NOUNS
        noun = self.rng.choice(pool)[0 if number == "sg" else 1]
        words = [self.rng.choice(DETERMINERS[number])]
        if self.rng.random() < 0.35:
            words.append(self.rng.choice(ADJECTIVES))
        words.append(noun)
        if allow_modifier and self.rng.random() < 0.3:  # an agreement distractor of the other number, half the time
            other = self.rng.choice(["sg", "pl"])
            words += [self.rng.choice(PREPOSITIONS), self.noun_phrase(other, allow_modifier=False)]
        return " ".join(words)

    def verb_phrase(self, number: str) -> str:
        index = 0 if number == "sg" else 1
        kind = self.rng.random()
        if kind < 0.35:
            words = [self.rng.choice(INTRANSITIVE)[index]]
        elif kind < 0.8:
            words = [self.rng.choice(TRANSITIVE)[index], self.noun_phrase(self.rng.choice(["sg", "pl"]))]
        else:
            words = [COPULA[index], self.rng.choice(ADJECTIVES)]
        if self.rng.random() < 0.3:
            words.append(self.rng.choice(ADVERBS))
        return " ".join(words)

    def clause(self) -> str:
        number = self.rng.choice(["sg", "pl"])
        subject = self.noun_phrase(number, animate=True)
        if self.rng.random() < 0.15:  # subject relative clause: its verb agrees with the head noun too
            subject += " that " + self.verb_phrase(number)
        return f"{subject} {self.verb_phrase(number)}"

    def sentence(self) -> str:
        text = self.clause()
        if self.rng.random() < 0.15:
            text += f" {self.rng.choice(['and', 'but', 'while'])} {self.clause()}"
        return text[0].upper() + text[1:] + "."


def generate_corpus(num_sentences: int, seed: int = 0) -> List[str]:
    """`num_sentences` sentences, one string each, deterministic in `seed`."""
    generator = SentenceGenerator(seed)
    return [generator.sentence() for _ in range(num_sentences)]
