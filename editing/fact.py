"""Fact-level edits: fit the subject's STEM rows so that one prompt yields a new target while the
subject's other facts stay (beyond the STEM paper, whose entity swap moves every fact at once).

The backbone stays frozen; only U_l[t] for the subject's tokens t (and the chosen layers l) are
free, a few thousand numbers. A few Adam steps minimise

    loss = mean_p -log P(target | p)  +  keep_weight * mean_k KL(P_0(. | k) || P(. | k))

over the edit prompts p (the prompt and any paraphrases) and the keep prompts k (the subject's
other facts, with P_0 their distributions before the edit). The result is ordinary RowWrites, so
it can be previewed, committed or sent as a per-request override like any other edit.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from editing.rows import check_layers
from memsvc.core.errors import InvalidArgument
from memsvc.core.values import RowOp, RowWrites


@dataclass
class FactConfig:
    steps: int = 100  # at most this many Adam steps
    keep_weight: float = 3.0  # weight of the KL that holds the subject's other facts
    lr: float = 0.1  # rows start near 1 (clients/backbone/model.py InProcessBank)
    target_prob: float = 0.6  # stop once every edit prompt gives the target at least this likely
    #                           and every keep prompt still gives its old top token


class _TableBank:
    """A bank over the rows of the tokens one fit reads (a model's bank protocol, differentiable)."""

    def __init__(self, token_ids, rows):
        self.position = {int(t): i for i, t in enumerate(token_ids)}
        self.rows = rows  # (n, L, d)

    def request(self, token_ids):
        local = torch.tensor([self.position[int(t)] for t in token_ids.tolist()])
        return _Ready(self.rows[local])  # (N, L, d)


class _Ready:
    def __init__(self, rows):
        self.rows = rows

    def result(self):
        return self.rows


def last_logits(model, bank, prompts):
    """Next-token logits (P, V) after each prompt (lists of ids), one right-padded batch: causal
    attention keeps the padding out of the positions that matter."""
    width = max(map(len, prompts))
    idx = torch.tensor([p + [p[0]] * (width - len(p)) for p in prompts])  # (P, width)
    logits = model(idx, bank)  # (P, width, V)
    return logits[torch.arange(len(prompts)), torch.tensor([len(p) - 1 for p in prompts])]  # (P, V)


def fit_fact(model, read_rows, prompts, target_id, subject_ids, keep_prompts=(), layers=(), config=FactConfig()):
    """Fit the subject's rows so that every prompt yields target_id. Returns (RowWrites, info).

    read_rows(token_ids) -> (n, L, d) float32 current rows; prompts / keep_prompts: lists of
    token ids; layers: positions in the table's layer axis (empty: all). info holds the steps
    taken, the lowest target probability and the final keep KL.
    """
    if not prompts:
        raise InvalidArgument("fact: no prompt to fit")
    subject = list(dict.fromkeys(int(t) for t in subject_ids))
    if not subject or not any(t in p for p in prompts for t in subject):
        raise InvalidArgument("subject: none of the subject's tokens occurs in the prompt")
    keep_prompts = list(keep_prompts)
    tokens = sorted({int(t) for p in list(prompts) + keep_prompts for t in p} | set(subject))
    rows = torch.from_numpy(np.asarray(read_rows(np.array(tokens, dtype=np.int64)), dtype=np.float32))  # (n, L, d)
    chosen = torch.from_numpy(check_layers(layers, rows.shape[1], "layers"))
    where = torch.tensor([tokens.index(t) for t in subject])
    free = rows[where][:, chosen].clone().requires_grad_(True)  # (n_subject, n_layers, d)
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            keep_before = F.log_softmax(last_logits(model, _TableBank(tokens, rows), keep_prompts), -1) if keep_prompts else None
        info = _optimise(model, tokens, rows, where, chosen, free, prompts, target_id, keep_prompts, keep_before, config)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    new = free.detach().numpy()  # (n_subject, n_layers, d)
    writes = RowWrites(token_ids=np.repeat(np.array(subject, dtype=np.int64), len(chosen)),
                       layers=np.tile(chosen.numpy().astype(np.int64), len(subject)),
                       vectors=new.reshape(-1, new.shape[-1]).astype(np.float32))
    return writes, info


def _optimise(model, tokens, rows, where, chosen, free, prompts, target_id, keep_prompts, keep_before, config):
    optimizer = torch.optim.Adam([free], lr=config.lr)
    n = len(prompts)
    for step in range(config.steps + 1):
        table = rows.clone()
        table[where[:, None], chosen[None, :]] = free  # (n, L, d) with the subject's rows free
        logp = F.log_softmax(last_logits(model, _TableBank(tokens, table), list(prompts) + keep_prompts), -1)  # (P + K, V)
        target_logp = logp[:n, target_id]  # (P,)
        kl = F.kl_div(logp[n:], keep_before, log_target=True, reduction="batchmean") if keep_prompts else torch.zeros(())
        kept = bool((logp[n:].argmax(-1) == keep_before.argmax(-1)).all()) if keep_prompts else True
        info = {"fit_steps": step, "fit_target_prob": float(target_logp.detach().exp().min()), "fit_keep_kl": float(kl.detach())}
        if step == config.steps or (info["fit_target_prob"] >= config.target_prob and kept):
            return info
        loss = -target_logp.mean() + config.keep_weight * kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def writes_to_ops(writes):
    """RowWrites as RowOps (one ``set`` per token over its written layers), for a commit or a
    per-request override that reproduces exactly these rows."""
    ops = []
    for token in dict.fromkeys(writes.token_ids.tolist()):
        mine = writes.token_ids == token
        ops.append(RowOp("set", int(token), layers=writes.layers[mine].tolist(), vector=writes.vectors[mine]))
    return ops
