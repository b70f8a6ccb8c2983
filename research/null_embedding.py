"""The null input embedding of a backbone trained with hidden entities, for checkpoints that lack it.

research/train.py hides an entity's input embedding behind a shared learned null vector half the
time and saves that vector as the checkpoint's `null_embedding`, the input embedding of a word
injected with `--vector` (editing/inject.py). Checkpoints trained before it was saved can get one fitted on
the frozen model: the vector that, in place of the entities of the training facts, best predicts
their next tokens. Only that vector moves; every other weight stays as it is.

    python -m research.null_embedding memsvc/demo_data --seed 0 --steps 150

writes it into DIR/model.safetensors beside the other tensors (left byte for byte as they were)
and records the command in the file's metadata under "null_embedding".
"""

import torch
import torch.nn.functional as F


def fit_null_embedding(model, bank, ids, hidden, steps=150, batch_size=64, lr=0.05, pad_id=0, seed=0):
    """A null input embedding (C,) for a frozen model that was trained with hidden entities but
    did not keep its null vector: the vector that, put at the `hidden` positions (N, L-1) of the
    sequences ids (N, L), best predicts their next tokens (Adam on cross-entropy, only it moves)."""
    frozen = [p for p in list(model.parameters()) + list(getattr(bank, "parameters", list)()) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    null = torch.zeros(model.config.d_model, requires_grad=True)
    optimizer = torch.optim.Adam([null], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    try:
        for _ in range(steps):
            rows = torch.randint(len(ids), (batch_size,), generator=generator)
            idx, targets = ids[rows, :-1], ids[rows, 1:]  # (B, L-1) each
            embeds = torch.where(hidden[rows][..., None], null, model.embed(idx))  # (B, L-1, C)
            logits = model(idx, bank, input_embeds=embeds)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return null.detach()


def fit_corpus_null(model, bank, tokenizer, corpus, steps=150, seed=0):
    """fit_null_embedding on the corpus's training facts with every entity token hidden."""
    from research.train import encode_facts

    missing = [e for e in corpus.entities if e not in tokenizer.index]
    if missing:
        raise ValueError(f"entity {missing[0]!r} of the corpus is not in the model's vocabulary (another corpus?)")
    ids = encode_facts(tokenizer, corpus.facts("train"))  # (n, L)
    is_entity = torch.zeros(len(tokenizer), dtype=torch.bool)
    is_entity[[tokenizer.index[e] for e in corpus.entities]] = True
    return fit_null_embedding(model, bank, ids, is_entity[ids[:, :-1]], steps=steps, pad_id=tokenizer.pad_id, seed=seed)


def add_null_embedding(ckpt_dir, corpus_config=None, steps=150, seed=0, how=""):
    """Fit a null embedding for the checkpoint in ckpt_dir (on the demo corpus of corpus_config,
    default CorpusConfig()) and write it into its weights file; returns it (C,)."""
    from clients.backbone.checkpoint import load_checkpoint, write_null_embedding
    from research.corpus import CorpusConfig, DemoCorpus

    model, bank, tokenizer = load_checkpoint(ckpt_dir)
    if model.null_embedding is not None:
        raise ValueError(f"{ckpt_dir} already has a null embedding")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same vector on every machine (reduction order)
    try:
        null = fit_corpus_null(model, bank, tokenizer, DemoCorpus(corpus_config or CorpusConfig()), steps, seed)
    finally:
        torch.set_num_threads(threads)
    write_null_embedding(ckpt_dir, null, how)
    return null


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Fit a null input embedding for a checkpoint that has none (frozen model).")
    parser.add_argument("checkpoint", help="checkpoint directory (model.safetensors, vocab.txt), trained on the default demo corpus")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = "python -m research.null_embedding " + " ".join(sys.argv[1:])
    null = add_null_embedding(args.checkpoint, steps=args.steps, seed=args.seed,
                              how=f"fitted on the frozen model (demo corpus training facts, entities hidden): {command}")
    print(f"wrote null_embedding (norm {null.norm():.4f}) into {args.checkpoint}")
