"""The embedded default corpus: seeded, English-like sentences the project generates itself (no downloads).

A small probabilistic grammar with number agreement, so that a model trained on it has something real to learn:
determiner-noun agreement (`this dog` / `these dogs`), subject-verb agreement across prepositional and relative-clause
distractors (`the keys near the cabinet are ...`), adjectives, transitive and intransitive verbs, and sentence-level
coordination. The same seed always gives the same corpus.
"""

import json
import random
from pathlib import Path
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
        if allow_modifier and self.rng.random() < 0.5:  # an agreement distractor of the other number, half the time
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
        if self.rng.random() < 0.3:  # subject relative clause: its verb agrees with the head noun too
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


# ---- BLiMP-format minimal pairs over the same grammar -------------------------------------------------------------

NUMBERED_DETERMINERS = {"sg": ["this", "that", "every"], "pl": ["these", "those", "many"]}
OTHER = {"sg": "pl", "pl": "sg"}


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:] + "."


class MinimalPairGenerator(SentenceGenerator):
    """One (good, bad) pair per call, differing in a single agreement-bearing word."""

    def _noun(self, number: str) -> str:
        return self.rng.choice([n for n in NOUNS if n[0] in ANIMATE])[0 if number == "sg" else 1]

    def _predicates(self, number: str) -> tuple:
        """(predicate agreeing with `number`, the same predicate agreeing with the other number)."""
        verb = self.rng.choice(INTRANSITIVE + [COPULA])
        good, bad = (verb[0], verb[1]) if number == "sg" else (verb[1], verb[0])
        tail = f" {self.rng.choice(ADJECTIVES)}" if verb is COPULA else ""
        return good + tail, bad + tail

    def _pair(self, subject: str, number: str) -> tuple:
        good, bad = self._predicates(number)
        return _capitalize(f"{subject} {good}"), _capitalize(f"{subject} {bad}")

    def determiner_noun_agreement(self) -> tuple:
        number = self.rng.choice(["sg", "pl"])
        noun, (predicate, _) = self._noun(number), self._predicates(number)
        right = self.rng.choice(NUMBERED_DETERMINERS[number])
        wrong = self.rng.choice(NUMBERED_DETERMINERS[OTHER[number]])
        return _capitalize(f"{right} {noun} {predicate}"), _capitalize(f"{wrong} {noun} {predicate}")

    def subject_verb_agreement(self) -> tuple:
        number = self.rng.choice(["sg", "pl"])
        return self._pair(f"the {self._noun(number)}", number)

    def agreement_across_prepositional_phrase(self) -> tuple:
        number = self.rng.choice(["sg", "pl"])
        attractor = self.noun_phrase(OTHER[number], allow_modifier=False)  # the distractor has the other number
        return self._pair(f"the {self._noun(number)} {self.rng.choice(PREPOSITIONS)} {attractor}", number)

    def agreement_across_relative_clause(self) -> tuple:
        number = self.rng.choice(["sg", "pl"])
        verb = self.rng.choice(TRANSITIVE)[0 if number == "sg" else 1]
        attractor = self.noun_phrase(OTHER[number], allow_modifier=False)
        return self._pair(f"the {self._noun(number)} that {verb} {attractor}", number)


PARADIGMS = {  # paradigm (UID) -> (phenomenon, field, generator method)
    "determiner_noun_agreement": ("determiner_noun_agreement", "morphology", "determiner_noun_agreement"),
    "subject_verb_agreement": ("subject_verb_agreement", "morphology", "subject_verb_agreement"),
    "distractor_agreement_prepositional_phrase": ("subject_verb_agreement", "syntax",
                                                  "agreement_across_prepositional_phrase"),
    "distractor_agreement_relative_clause": ("subject_verb_agreement", "syntax", "agreement_across_relative_clause"),
}


def generate_minimal_pairs(pairs_per_paradigm: int = 200, seed: int = 1) -> dict:
    """{paradigm: [BLiMP-format records]}, distinct pairs only, deterministic in `seed`."""
    generator = MinimalPairGenerator(seed)
    result = {}
    for paradigm, (phenomenon, field_name, method) in PARADIGMS.items():
        seen, records = set(), []
        for _ in range(pairs_per_paradigm * 20):  # bounded: small grammars run out of distinct pairs
            good, bad = getattr(generator, method)()
            if (good, bad) in seen:
                continue
            seen.add((good, bad))
            records.append({"sentence_good": good, "sentence_bad": bad, "field": field_name,
                            "linguistics_term": phenomenon, "UID": paradigm, "pairID": str(len(records))})
            if len(records) == pairs_per_paradigm:
                break
        result[paradigm] = records
    return result


def write_minimal_pairs(directory, pairs_per_paradigm: int = 200, seed: int = 1):
    """Write one `<paradigm>.jsonl` per paradigm (the BLiMP layout); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for paradigm, records in generate_minimal_pairs(pairs_per_paradigm, seed).items():
        (directory / f"{paradigm}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory
