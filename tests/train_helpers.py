"""Small train / validation sets for trainer tests: a few documents per domain, so a run takes a second."""

from dsv3_edu.data import BlockDataset, documents, load_corpus


def small_data(train_docs: int, val_docs: int, block_size: int = 32) -> dict[str, BlockDataset]:
    """``train()``'s ``train_data``/``val_data`` keyword arguments, from the first documents of each domain."""

    def small(split, n_docs):
        corpus = {d: "".join(doc + "<|endoftext|>\n" for doc in documents(text)[:n_docs])
                  for d, text in load_corpus(split).items()}
        return BlockDataset(split, block_size, corpus=corpus)

    return {"train_data": small("train", train_docs), "val_data": small("validation", val_docs)}
