"""Byte tokenizer, the shipped corpus (byte-identical when regenerated), training batches."""

import pytest
import torch

from dsv3_edu.config import ModelConfig
from dsv3_edu.data import (
    CORPUS_DIR,
    DOMAINS,
    SPLITS,
    BlockDataset,
    ByteTokenizer,
    batches,
    corpus_path,
    documents,
    domain_of,
    generate_corpus,
    generate_documents,
    load_corpus,
    split_documents,
)


def test_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert tok.vocab_size == ModelConfig.tiny().vocab_size == 260
    text = "Mia goes to the café.\n    return x + 3  # ok"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id == 257 and ids[-1] == tok.eos_id == 258
    assert len(ids) == len(text.encode("utf-8")) + 2  # é is two bytes
    assert tok.decode(ids) == text  # specials are skipped
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.encode("ab") == [97, 98]
    assert tok.decode([0xC3]) == "\ufffd"  # half a character: replaced, not an exception
    shown = tok.decode_tokens(tok.encode("é\n", add_bos=True) + [tok.pad_id])
    assert shown == ["<bos>", "<0xC3>", "<0xA9>", "\\n", "<pad>"]
    with pytest.raises(ValueError, match="outside"):
        tok.decode([260])
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"bytes")


def test_shipped_corpus_is_what_the_generator_writes():
    for split in SPLITS:
        generated = generate_corpus(seed=0, split=split)
        assert list(generated) == list(DOMAINS)
        for domain, text in generated.items():
            assert corpus_path(domain, split).read_bytes() == text.encode("utf-8"), f"{domain}.{split} differs"
    assert (CORPUS_DIR / "README.md").exists()


def test_corpus_size_splits_and_seed():
    docs = generate_documents(seed=0)
    total = sum(len(d.encode("utf-8")) for ds in docs.values() for d in ds)
    assert 1_000_000 < total < 2_000_000
    for domain in DOMAINS:
        train, val = split_documents(docs[domain], "train"), split_documents(docs[domain], "validation")
        assert len(train) + len(val) == len(docs[domain]) and 0.08 < len(val) / len(docs[domain]) < 0.12
    train = load_corpus("train")
    assert documents(train["code"]) == split_documents(docs["code"], "train")
    assert "def " in train["code"] and "+" in train["arithmetic"] and "," in train["csv"] and ". " in train["prose"]
    other = generate_documents(seed=1, bytes_per_domain=2000)
    assert other["prose"][:3] != docs["prose"][:3]
    with pytest.raises(ValueError, match="split"):
        load_corpus("test")


def test_batches_are_seeded_shifted_and_labelled():
    a = list(batches("validation", batch_size=4, block_size=32, seed=3, steps=3))
    b = list(batches("validation", batch_size=4, block_size=32, seed=3, steps=3))
    assert len(a) == 3
    for (x1, y1, d1), (x2, y2, d2) in zip(a, b):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and d1 == d2
    x, y, domains = a[0]
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.long
    assert torch.equal(x, y)  # Hugging Face convention: the model shifts the labels itself
    assert x.max() < 260 and set(domains) <= set(DOMAINS)
    assert domain_of(a[0]).tolist() == [DOMAINS.index(d) for d in domains]
    c = next(batches("validation", batch_size=4, block_size=32, seed=4))
    assert not torch.equal(c.input_ids, x)
    # every block really comes from its domain's text
    texts = load_corpus("validation")
    for row, dom in zip(x, domains):
        runs = [[]]  # stretches of bytes between special tokens
        for i in row.tolist():
            if i < 256:
                runs[-1].append(i)
            else:
                runs.append([])
        piece = bytes(max(runs, key=len)).decode("utf-8", errors="ignore")
        assert len(piece) > 4 and piece in texts[dom]


def test_eval_batches_are_fixed_and_cover_every_domain():
    ds = BlockDataset("validation", block_size=64)
    first = list(ds.eval_batches(batch_size=8, blocks_per_domain=5))
    again = list(ds.eval_batches(batch_size=8, blocks_per_domain=5))
    assert sum(len(b.domains) for b in first) == 5 * len(DOMAINS)
    assert all(torch.equal(p.input_ids, q.input_ids) for p, q in zip(first, again))
    assert [d for b in first for d in b.domains] == [d for d in DOMAINS for _ in range(5)]
    with pytest.raises(ValueError, match="block_size"):
        BlockDataset("validation", block_size=1)
