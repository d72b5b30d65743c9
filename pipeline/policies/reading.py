"""Reading a question and a chunk the way the scripted expert needs, without knowing any template.

A question is its scaffolding (common English words and the words questions about facts use:
"value", "recorded", "mentioned", ...) around what is distinctive: the key. So the key is what is
left once the scaffolding is struck out; a list of keys ("a, b and c") is a `set` question. A fact
is the sentence of a chunk that holds the key (compared on lowercase letter-digit runs, so case,
hyphens and spacing do not matter) and its value is the value-looking token of that sentence (one
with a digit) that is not part of the key. Nothing here knows a needle or question template.
"""

from __future__ import annotations

import re

from pipeline.tasks.words import FILLER_WORDS

QUESTION_WORDS = frozenset(
    """
value values number numbers code codes identifier identifiers id ids entry entries figure figures reference
references record records recorded mentioned mention text texts document documents passage passages input
context stated state given written listed list lists linked link associated assigned attached paired pair
corresponding corresponds correspond according tell give find look lookup say says said special magic secret
secrets codeword codewords keeps kept keep behind chosen chose choose goes go unlock unlocks unlocked uses use
used holds hold held knows know please answer answers digits digit only comma commas comma-separated separated
provided appears appear filed file registry ledger reads read does do did have has it its is are was were be
what which who whom whose where when how the a an and or me my you your this that these those each all any
stored store saved save noted note notes belongs belong belonging goes matching match matches shown show
kept named called labelled labeled tagged marked holds mentioned somewhere inside within item items exact
exactly return report reported
""".split()
)
SCAFFOLD = frozenset(w.lower() for w in FILLER_WORDS) | QUESTION_WORDS
HOP_CUES = ("codeword", "code word")  # a question through an intermediate key: find the link, then its value

_QUESTION_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-'’][A-Za-z0-9]+)*|[,;:?!.()]")
_ALNUM = re.compile(r"[a-z0-9]+")
_VALUE_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-/.,:][A-Za-z0-9]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def alnum(text: str) -> list[str]:
    """Lowercase letter-digit runs: the form keys are compared in."""
    return _ALNUM.findall(text.lower())


def _is_scaffold(token: str) -> bool:
    return token.lower() in SCAFFOLD


def _distinctive(token: str) -> bool:
    return any(c.isdigit() for c in token) or "-" in token or token[:1].isupper()


def _run_score(words: list[str]) -> int:
    return len(words) + 2 * any(_distinctive(w) for w in words)


def _trim(run: list[str]) -> list[str]:
    """A run with a distinctive word loses its trailing plain lowercase words: verbs the scaffolding
    does not list ("... does bus line 38X depart?" -> "38X")."""
    if not any(_distinctive(w) for w in run):
        return run
    while run and not _distinctive(run[-1]):
        run = run[:-1]
    return run


def question_keys(question: str) -> list[str]:
    """The key(s) a question asks about: the best-scoring run of non-scaffolding words, or list of runs
    joined only by "," / "and" (articles allowed: "a, the b and the c"), which is a `set` question."""
    groups: list[list[list[str]]] = []  # groups of runs of words
    run: list[str] = []
    listed, broken = False, False  # since the last run ended: a list separator seen / another word seen
    for token in _QUESTION_TOKEN.findall(question):
        token = re.sub(r"['’]s$", "", token)  # Alice's -> Alice
        if token[0].isalnum() and not _is_scaffold(token):
            if not run:
                if listed and not broken and groups:
                    groups[-1].append(run)
                else:
                    groups.append([run])
            run.append(token)
            continue
        if run:
            run, listed, broken = [], False, False
        if token == "," or token.lower() == "and":
            listed = True
        elif token.lower() not in ("the", "a", "an"):
            broken = True
    if not groups:
        return []
    best = max(groups, key=lambda g: sum(_run_score(r) for r in g))  # the first of the best on ties
    return [" ".join(_trim(r)) for r in best]


def hint_words(question: str, keys: list[str]) -> set[str]:
    """The question's own words that are neither scaffolding nor key ("licence" in "Name the licence
    of X"): a value next to one of them is the one asked for when a sentence holds several."""
    key_tokens = {t for k in keys for t in alnum(k)}
    return {t for t in alnum(question) if t not in SCAFFOLD and t not in key_tokens}


def is_hop_question(question: str) -> bool:
    lower = question.lower()
    return any(cue in lower for cue in HOP_CUES)


def search_pieces(key: str) -> list[str]:
    """Other keywords for a key whose search found nothing: its distinctive words, longest first."""
    words = [w for w in re.split(r"[\s]+", key) if w]
    parts = [p for w in words for p in ([w] if len(words) > 1 else re.split(r"[-_]", w)) if len(p) >= 3]
    unique = [p for i, p in enumerate(parts) if p.lower() not in {q.lower() for q in parts[:i]}]
    return sorted((p for p in unique if p.lower() != key.lower()), key=len, reverse=True)


def decoy_keyword(key: str) -> str:
    """A plausible but wrong keyword that BM25 will not match: the key's parts run together
    ("azure-jaguar" -> "azurejaguar", "QX-4471" -> "QX4471"), or a one-word key in the plural."""
    parts = re.findall(r"[A-Za-z0-9]+", key)
    if len(parts) > 1:
        return "".join(parts)
    return key + ("es" if key.endswith("s") else "s")


def _contains(sentence_tokens: list[str], key_tokens: list[str]) -> int:
    """Position after the key in the sentence, or -1."""
    n, joined = len(key_tokens), "".join(key_tokens)
    for i in range(len(sentence_tokens)):
        if sentence_tokens[i : i + n] == key_tokens:
            return i + n
        if sentence_tokens[i] == joined:  # written without its hyphen or space: QX4471, azurejaguar
            return i + 1
    return -1


def _value_tokens(sentence: str, key_tokens: set[str], want: str, hints: set[str]) -> list[tuple[int, int, str]]:
    """(hinted, word position, token) of every value-looking token that is not part of the key."""
    found = []
    for m in _VALUE_TOKEN.finditer(sentence):
        token = m.group(0).rstrip(".,:")
        parts = set(alnum(token))
        if not parts or parts <= key_tokens:
            continue
        has_digit = any(c.isdigit() for c in token)
        if has_digit or (want == "link" and "-" in token):
            before = alnum(sentence[: m.start()])
            found.append((int(bool(set(before[-3:]) & hints)), len(before), token))
    return found


def find_fact(text: str, key: str, want: str = "value", hints: set[str] | None = None) -> tuple[str, str] | None:
    """(value, sentence) for `key` in `text`, or None. `want='link'` also accepts a hyphenated word
    (a codeword) as the value. An exact key match wins; a sentence with most of a long key's words
    is the fallback (a question may word the key with an extra word). Of several values in the
    sentence, one right after a `hints` word wins, then the first after the key."""
    hints = hints or set()
    key_tokens = [t for t in alnum(key) if t not in ("the", "a", "an")]
    if not key_tokens:
        return None
    partial: tuple[int, str, str] | None = None
    for sentence in _SENTENCE_END.split(text):
        tokens = alnum(sentence)
        values = _value_tokens(sentence, set(key_tokens), want, hints)
        if not values:
            continue
        end = _contains(tokens, key_tokens)
        if end >= 0:
            best = max(values, key=lambda v: (v[0], v[1] >= end, -abs(v[1] - end)))
            return best[2], sentence.strip()
        shared = len(set(tokens) & set(key_tokens))
        long_key_mostly = len(key_tokens) >= 3 and shared >= 2 and 3 * shared >= 2 * len(key_tokens)
        if long_key_mostly and (partial is None or shared > partial[0]):
            partial = (shared, max(values)[2], sentence.strip())
    return (partial[1], partial[2]) if partial else None
