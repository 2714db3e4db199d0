"""Data for the tiny models: a byte tokenizer and a small synthetic corpus with four domains.

The corpus is written by this module (pure Python, seeded, no download) and shipped under
``data/corpus/``; ``python -m dsv3_edu.data`` rewrites the same bytes. Its four domains look
different on purpose, so that experts can specialize and per-domain loads differ:

- ``prose``: short stories about a small world (names, animals, objects, places) that repeat
  what they mentioned ("Mia has a red kite. ... Mia gives the red kite to Tom.");
- ``arithmetic``: sums, differences, times tables and counting;
- ``code``: small Python functions with indentation and calls whose results are in comments;
- ``csv``: tables with a header, some columns computed from others.

Every domain has many predictable bytes (a tiny model learns them in minutes, and a draft of the
token after next is often right) and some that need the context (names, numbers).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from .config import DATA_DIR

CORPUS_DIR = DATA_DIR / "corpus"
DOMAINS = ("prose", "arithmetic", "code", "csv")
SPLITS = ("train", "validation")
END_OF_DOC = "<|endoftext|>\n"  # separates documents in the corpus files
BYTES_PER_DOMAIN = 320_000  # about 1.4 MB for the whole corpus
VALIDATION_EVERY = 10  # every 10th document goes to the validation split


# ----------------------------------------------------------------------------------- tokenizer


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0-255 are bytes, then four special tokens (vocab_size 260)."""

    pad_id, bos_id, eos_id, reserved_id = 256, 257, 258, 259
    special_tokens = {256: "<pad>", 257: "<bos>", 258: "<eos>", 259: "<reserved>"}
    vocab_size = 260

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def _ids(self, ids) -> list[int]:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        for i in ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"token id {i} is outside the byte vocabulary [0, {self.vocab_size})")
        return [int(i) for i in ids]

    def decode(self, ids) -> str:
        """Bytes back to text; special tokens are skipped, broken UTF-8 becomes U+FFFD."""
        return bytes(i for i in self._ids(ids) if i < 256).decode("utf-8", errors="replace")

    def decode_tokens(self, ids) -> list[str]:
        """One printable string per token, for tables and plots: 'a', '\\n', '<0xC3>', '<bos>'."""
        out = []
        for i in self._ids(ids):
            if i >= 256:
                out.append(self.special_tokens[i])
            elif 32 <= i < 127:
                out.append(chr(i))
            elif i in (9, 10, 13):
                out.append({9: "\\t", 10: "\\n", 13: "\\r"}[i])
            else:
                out.append(f"<0x{i:02X}>")
        return out


# ------------------------------------------------------------------------------------- corpus


class _Rng:
    """Choices built only on random.random(), whose sequence Python guarantees across versions."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)

    def between(self, lo: int, hi: int) -> int:  # inclusive on both ends
        return lo + int(self._r.random() * (hi - lo + 1))

    def pick(self, seq: Sequence):
        return seq[int(self._r.random() * len(seq))]

    def chance(self, p: float) -> bool:
        return self._r.random() < p

    def sample(self, seq: Sequence, n: int) -> list:
        pool = list(seq)
        return [pool.pop(int(self._r.random() * len(pool))) for _ in range(n)]


NAMES = ("Mia", "Tom", "Ada", "Leo", "Sam", "Zoe", "Ben", "Ivy", "Max", "Eva")
ANIMALS = ("cat", "dog", "fox", "owl", "hen", "frog", "duck", "goat")
OBJECTS = ("ball", "book", "cup", "hat", "kite", "lamp", "key", "box", "apple", "drum")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
MOODS = ("happy", "sad", "tired", "hungry", "sleepy", "angry", "calm")
SIZES = ("small", "big", "tiny", "young", "quiet", "loud")
PLACES = ("garden", "kitchen", "forest", "river", "market", "school", "park", "café")
TIMES = ("In the morning", "At noon", "In the evening", "One day", "On Sunday")
CITIES = ("paris", "rome", "oslo", "lima", "cairo", "tokyo", "delhi", "quito")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SKIES = ("sunny", "cloudy", "rainy", "windy", "snowy")


def _story(rng: _Rng) -> str:
    a, b = rng.sample(NAMES, 2)
    color, obj, place = rng.pick(COLORS), rng.pick(OBJECTS), rng.pick(PLACES)
    animal, size, mood = rng.pick(ANIMALS), rng.pick(SIZES), rng.pick(MOODS)
    s = [f"{rng.pick(TIMES)}, {a} goes to the {place}.", f"{a} has a {color} {obj}."]
    if rng.chance(0.6):
        s.append(f"At the {place}, {a} meets {b}.")
    if rng.chance(0.7):
        s += [f"{a} and {b} see a {size} {animal}.", f"The {animal} is {mood}."]
    if rng.chance(0.8):
        s += [f"{a} gives the {color} {obj} to {b}.", f"{b} says: thank you, {a}!"]
    else:
        s += [f"{b} asks: can I have the {color} {obj}?", f"{a} says: no, it is my {obj}."]
    s.append(f"{b} is {rng.pick(MOODS)}.")
    if rng.chance(0.5):
        n = rng.between(2, 9)
        s.append(f"{a} has {n} {obj}s and {b} has {n + 1} {obj}s.")
    s.append(f"Then {a} and {b} go home.")
    return " ".join(s) + "\n"


def _prose(rng: _Rng) -> str:
    return "".join(_story(rng) for _ in range(rng.between(1, 2)))


def _arithmetic(rng: _Rng) -> str:
    kind = rng.between(0, 4)
    if kind == 0:
        n = rng.between(2, 12)
        return f"times table of {n}:\n" + "".join(f"{n}*{i}={n * i}\n" for i in range(1, 11))
    if kind == 1:
        pairs = [(rng.between(0, 99), rng.between(0, 99)) for _ in range(rng.between(6, 10))]
        return "sums:\n" + "".join(f"{x}+{y}={x + y}\n" for x, y in pairs)
    if kind == 2:
        pairs = [sorted((rng.between(0, 99), rng.between(0, 99)), reverse=True) for _ in range(rng.between(6, 10))]
        return "differences:\n" + "".join(f"{x}-{y}={x - y}\n" for x, y in pairs)
    if kind == 3:
        step = rng.between(2, 9)
        return f"count by {step}: " + " ".join(str(step * i) for i in range(1, 13)) + "\n"
    start = rng.between(12, 40)
    return f"count down from {start}: " + " ".join(str(i) for i in range(start, start - 12, -1)) + "\n"


def _function(rng: _Rng, kind: int) -> tuple[str, str]:
    """One small Python function (one of 8 kinds) and one call with its result as a comment."""
    var = rng.pick(("x", "n", "value", "num"))
    k = rng.between(2, 9)
    a = rng.between(0, 20)
    noun = rng.pick(ANIMALS)
    if kind == 0:
        return f"def add_{k}({var}):\n    return {var} + {k}\n", f"print(add_{k}({a}))  # {a + k}\n"
    if kind == 1:
        return f"def times_{k}({var}):\n    return {var} * {k}\n", f"print(times_{k}({a}))  # {a * k}\n"
    if kind == 2:
        code = (f"def sum_to({var}):\n    total = 0\n    for i in range({var}):\n"
                f"        total = total + i\n    return total\n")
        return code, f"print(sum_to({k}))  # {k * (k - 1) // 2}\n"
    if kind == 3:
        limit = rng.between(10, 50)
        code = f"def is_big({var}):\n    if {var} > {limit}:\n        return True\n    return False\n"
        b = rng.between(0, 60)
        return code, f"print(is_big({b}))  # {b > limit}\n"
    if kind == 4:
        code = (f"def count_{noun}(items):\n    count = 0\n    for item in items:\n"
                f"        if item == \"{noun}\":\n            count = count + 1\n    return count\n")
        items = [rng.pick(ANIMALS) for _ in range(rng.between(2, 4))]
        listed = ", ".join(f'"{i}"' for i in items)
        return code, f"print(count_{noun}([{listed}]))  # {items.count(noun)}\n"
    if kind == 5:
        code = "def max_of(a, b):\n    if a > b:\n        return a\n    return b\n"
        b = rng.between(0, 20)
        return code, f"print(max_of({a}, {b}))  # {max(a, b)}\n"
    if kind == 6:
        name = rng.pick(NAMES)
        code = "def greet(name):\n    return \"hello, \" + name + \"!\"\n"
        return code, f"print(greet(\"{name}\"))  # hello, {name}!\n"
    code = f"def double({var}):\n    return {var} + {var}\n"
    return code, f"print(double({a}))  # {2 * a}\n"


def _code(rng: _Rng) -> str:
    parts = [_function(rng, kind) for kind in rng.sample(range(8), rng.between(2, 3))]
    return "\n".join(code for code, _ in parts) + "\n" + "".join(call for _, call in parts)


def _csv(rng: _Rng) -> str:
    kind = rng.between(0, 2)
    rows = rng.between(4, 8)
    if kind == 0:
        lines = ["name,age,city,pet"]
        lines += [f"{rng.pick(NAMES).lower()},{rng.between(18, 80)},{rng.pick(CITIES)},{rng.pick(ANIMALS)}"
                  for _ in range(rows)]
    elif kind == 1:
        lines = ["item,price,qty,total"]
        for _ in range(rows):
            price, qty = rng.between(1, 20), rng.between(1, 9)
            lines.append(f"{rng.pick(OBJECTS)},{price},{qty},{price * qty}")
    else:
        first = rng.between(0, 6)
        lines = ["day,temp,sky"]
        lines += [f"{DAYS[(first + i) % 7]},{rng.between(-5, 30)},{rng.pick(SKIES)}" for i in range(7)]
    return "\n".join(lines) + "\n"


_GENERATORS = {"prose": _prose, "arithmetic": _arithmetic, "code": _code, "csv": _csv}


def generate_documents(seed: int = 0, bytes_per_domain: int = BYTES_PER_DOMAIN) -> dict[str, list[str]]:
    """domain -> documents, about ``bytes_per_domain`` bytes each (both splits together)."""
    out = {}
    for i, domain in enumerate(DOMAINS):
        rng = _Rng(seed * 1000 + i)
        docs, size = [], 0
        while size < bytes_per_domain:
            doc = _GENERATORS[domain](rng)
            docs.append(doc)
            size += len(doc.encode("utf-8"))
        out[domain] = docs
    return out


def split_documents(docs: Sequence[str], split: str) -> list[str]:
    """Every VALIDATION_EVERY-th document is validation, the rest train."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    is_val = split == "validation"
    return [d for j, d in enumerate(docs) if (j % VALIDATION_EVERY == VALIDATION_EVERY - 1) == is_val]


def join_documents(docs: Sequence[str]) -> str:
    return "".join(doc + END_OF_DOC for doc in docs)


def documents(text: str) -> list[str]:
    """The documents of one corpus file's text (the inverse of ``join_documents``)."""
    return text.split(END_OF_DOC)[:-1]


def generate_corpus(seed: int = 0, split: str = "train") -> dict[str, str]:
    """domain -> text of one split, exactly the content of ``data/corpus/{domain}.{split}.txt`` for seed 0."""
    return {domain: join_documents(split_documents(docs, split)) for domain, docs in generate_documents(seed).items()}


def corpus_path(domain: str, split: str, corpus_dir: str | Path = CORPUS_DIR) -> Path:
    return Path(corpus_dir) / f"{domain}.{split}.txt"


def write_corpus(corpus_dir: str | Path = CORPUS_DIR, seed: int = 0) -> list[Path]:
    """Generate the corpus and write one UTF-8 file per domain and split."""
    Path(corpus_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for split in SPLITS:
        for domain, text in generate_corpus(seed, split).items():
            path = corpus_path(domain, split, corpus_dir)
            path.write_bytes(text.encode("utf-8"))
            paths.append(path)
    return paths


def load_corpus(split: str = "train", corpus_dir: str | Path = CORPUS_DIR) -> dict[str, str]:
    """domain -> text of one split, read from the shipped files."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    out = {}
    for domain in DOMAINS:
        path = corpus_path(domain, split, corpus_dir)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: regenerate the corpus with `python -m dsv3_edu.data`")
        out[domain] = path.read_bytes().decode("utf-8")
    return out


# ------------------------------------------------------------------------------------ batches


class Batch(NamedTuple):
    input_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long: a copy of input_ids; the model shifts them (Hugging Face convention)
    domains: list[str]  # the domain of each of the B sequences


class BlockDataset:
    """Fixed-length training blocks cut from one token stream per domain.

    Each domain's documents become ``<bos> doc <eos> <bos> doc <eos> ...``; a block is a window
    of ``block_size`` tokens from one domain. ``labels`` follow the Hugging Face convention that
    ``DeepSeekV3.forward`` uses: they equal ``input_ids`` and the model shifts them (position i
    predicts labels[i + 1], MTP depth k predicts labels[i + k + 1]), so never shift them again.
    """

    def __init__(self, split: str = "train", block_size: int = 128, corpus: dict[str, str] | None = None):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
            raise ValueError(f"block_size={block_size!r}: use an integer of at least 2")
        corpus = load_corpus(split) if corpus is None else corpus
        tok = ByteTokenizer()
        self.block_size = block_size
        self.domains = list(corpus)
        self.streams = {}
        for domain, text in corpus.items():
            ids = [i for doc in documents(text) for i in tok.encode(doc, add_bos=True, add_eos=True)]
            if len(ids) < block_size:
                raise ValueError(f"domain {domain!r} has {len(ids)} tokens, fewer than block_size={block_size}")
            self.streams[domain] = torch.tensor(ids, dtype=torch.long)

    def _block(self, domain: str, start: int) -> torch.Tensor:
        return self.streams[domain][start : start + self.block_size]  # (T,)

    def _batch(self, blocks: list[torch.Tensor], domains: list[str]) -> Batch:
        x = torch.stack(blocks)  # (B, T)
        return Batch(x, x.clone(), domains)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """B random blocks; each row's domain is drawn uniformly."""
        which = torch.randint(len(self.domains), (batch_size,), generator=generator).tolist()
        domains = [self.domains[w] for w in which]
        blocks = []
        for domain in domains:
            high = len(self.streams[domain]) - self.block_size + 1
            start = int(torch.randint(high, (1,), generator=generator))
            blocks.append(self._block(domain, start))
        return self._batch(blocks, domains)

    def eval_batches(self, batch_size: int, blocks_per_domain: int | None = None) -> Iterator[Batch]:
        """Consecutive non-overlapping blocks of every domain, in a fixed order (no randomness)."""
        pending: list[tuple[str, int]] = []
        for domain in self.domains:
            n = len(self.streams[domain]) // self.block_size
            n = n if blocks_per_domain is None else min(n, blocks_per_domain)
            pending += [(domain, j * self.block_size) for j in range(n)]
        for i in range(0, len(pending), batch_size):
            chunk = pending[i : i + batch_size]
            yield self._batch([self._block(d, s) for d, s in chunk], [d for d, _ in chunk])


def batches(
    split: str = "train", batch_size: int = 16, block_size: int = 128, seed: int = 0, steps: int | None = None
) -> Iterator[Batch]:
    """Random training batches ``(input_ids, labels, domains)`` from a seeded ``torch.Generator``.

    Endless when ``steps`` is None. The same seed gives the same batches. Feed them as
    ``model(input_ids, labels=labels)``: the labels are not shifted (the model does it).
    """
    dataset = BlockDataset(split, block_size)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    while steps is None or step < steps:
        yield dataset.sample(batch_size, generator)
        step += 1


def domain_of(batch: Batch) -> torch.Tensor:
    """The domain of each sequence as an index into DOMAINS: (B,) long."""
    return torch.tensor([DOMAINS.index(d) for d in batch.domains], dtype=torch.long)


def _main() -> None:
    parser = argparse.ArgumentParser(description="Write the dsv3-edu corpus (deterministic).")
    parser.add_argument("--out", default=str(CORPUS_DIR), help="output folder (default: data/corpus)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_corpus(args.out, args.seed):
        print(f"{path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    _main()
