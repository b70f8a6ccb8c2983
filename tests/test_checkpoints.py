"""Official STEM checkpoints (memsvc/store/checkpoints.py): tiny ones written exactly as the STEM
authors' training code writes them (params.json + stem_shards/stem_model_mp<r>.pt split along
d_ff, or consolidated/consolidated_stem.pth), imported end to end, and the refusals."""
import json

import numpy as np
import pytest
import torch

from memsvc.core.dtypes import to_float32
from memsvc.core.errors import InvalidArgument
from memsvc.store import KnowledgeBase, StoreConfig
from memsvc.store.checkpoints import converted, read_stem_checkpoint, refuse_lone_shard

VOCAB, D_FF = 37, 24


def tables(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(VOCAB, D_FF, generator=g) for _ in range(n)]


def write_params(folder, n_layers=4, stem_layers=None):
    """The train config as the authors' CheckpointManager dumps it (the model args nested under 'model')."""
    model = {"dim": 16, "n_layers": n_layers, "n_heads": 2, "n_kv_heads": 1, "vocab_size": VOCAB,
             "stem_embedding_dim": D_FF, "stem_layers": stem_layers}
    (folder / "params.json").write_text(json.dumps({"name": "tiny", "steps": 100, "model": model}))


def write_step(folder, full, mp, stem_layers=None):
    """A step directory: each rank saves its [V, d_ff/mp] column block of every table, and optimizer state beside it."""
    shards = folder / "stem_shards"
    shards.mkdir(parents=True)
    write_params(folder, stem_layers=stem_layers)
    w = D_FF // mp
    for r in range(mp):
        torch.save({f"stem_embeddings.{i}.weight": t[:, r * w:(r + 1) * w].clone() for i, t in enumerate(full)},
                   shards / f"stem_model_mp{r}.pt")
        torch.save({"state": {}, "param_groups": []}, shards / f"stem_optim_mp{r}.pt")
    return folder


def expected(full):
    return torch.stack(full, dim=1).numpy()  # (V, L, d_ff)


@pytest.mark.parametrize("mp", [1, 2, 12])  # 12 ranks: mp10 and mp11 must come after mp9, not after mp1
def test_a_step_directory_joins_its_shards_in_numeric_rank_order(tmp_path, mp):
    full = tables(3)
    ckpt = read_stem_checkpoint(write_step(tmp_path / "0000000100", full, mp))
    assert ckpt.rows.shape == (VOCAB, 3, D_FF) and ckpt.dtype == "float32"
    assert ckpt.model_layers == [1, 2, 3]  # the default: every layer but 0
    np.testing.assert_array_equal(ckpt.rows[0:VOCAB], expected(full))
    np.testing.assert_array_equal(ckpt.rows[5], expected(full)[5])


def test_a_consolidated_directory_and_the_stem_layers_list_order(tmp_path):
    full = tables(2, seed=1)
    step = tmp_path / "0000000200"
    (step / "consolidated").mkdir(parents=True)
    write_params(step / "consolidated", n_layers=6, stem_layers=[4, 2])
    torch.save({f"stem_embeddings.{i}.weight": t for i, t in enumerate(full)}, step / "consolidated" / "consolidated_stem.pth")
    for where in (step, step / "consolidated"):
        ckpt = read_stem_checkpoint(where)
        assert ckpt.model_layers == [4, 2]  # table layer 0 feeds transformer layer 4
        np.testing.assert_array_equal(ckpt.rows[0:VOCAB], expected(full))


def test_import_streams_a_checkpoint_into_a_table_and_records_its_model_layers(tmp_path):
    full = tables(3, seed=2)
    ckpt = read_stem_checkpoint(write_step(tmp_path / "step", full, 4, stem_layers=[1, 3, 5]))
    words = [f"w{i}" for i in range(VOCAB)]
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True)) as kb:
        kb.import_table("stem", converted(ckpt.rows, ckpt.dtype, "bfloat16"), words, dtype="bfloat16")
        got = kb.lookup("stem", list(range(VOCAB)))
        assert got.dtype == "bfloat16"
        rows = to_float32(got.rows, "bfloat16")[got.inverse]
        bf16 = full[0].to(torch.bfloat16).float().numpy()  # round to nearest even, as torch does
        np.testing.assert_array_equal(rows[:, 0, :], bf16)


def test_refusals_name_what_is_wrong(tmp_path):
    full = tables(2)
    step = write_step(tmp_path / "step", full, 4, stem_layers=[1, 2])
    with pytest.raises(InvalidArgument, match=r"stem_model_mp2.pt is one model-parallel shard.*import its step directory"):
        refuse_lone_shard(step / "stem_shards" / "stem_model_mp2.pt")
    (step / "stem_shards" / "stem_model_mp2.pt").unlink()
    with pytest.raises(InvalidArgument, match=r"stem_shards: missing stem_model_mp2.pt \(found ranks \[0, 1, 3\]\)"):
        read_stem_checkpoint(step)

    uneven = tmp_path / "uneven" / "stem_shards"
    uneven.mkdir(parents=True)
    write_params(uneven.parent, stem_layers=[1])
    torch.save({"stem_embeddings.0.weight": torch.zeros(VOCAB, 16)}, uneven / "stem_model_mp0.pt")
    torch.save({"stem_embeddings.0.weight": torch.zeros(VOCAB, 8)}, uneven / "stem_model_mp1.pt")
    with pytest.raises(InvalidArgument, match=r"shards of unequal shape: stem_model_mp0.pt \[37, 16\], stem_model_mp1.pt \[37, 8\]"):
        read_stem_checkpoint(uneven.parent)

    short = write_step(tmp_path / "short", full, 2, stem_layers=[1, 2, 3])  # params name 3 tables, shards hold 2
    with pytest.raises(InvalidArgument, match=r"stem_model_mp0.pt: no 2-D stem_embeddings.2.weight"):
        read_stem_checkpoint(short)

    wide = write_step(tmp_path / "wide", full, 2, stem_layers=[1, 2])
    write_params(wide, stem_layers=[1, 2])
    params = json.loads((wide / "params.json").read_text())
    params["model"]["stem_embedding_dim"] = 2 * D_FF
    (wide / "params.json").write_text(json.dumps(params))
    with pytest.raises(InvalidArgument, match=r"stem_embedding_dim is 48 but the tables are 24 wide"):
        read_stem_checkpoint(wide)


def write_gemma3n_dir(folder, layers=3, d=4, vocab=VOCAB, sharded=False):
    """An HF Gemma 3n directory as save_pretrained writes it: config.json (text_config nested) and
    model.safetensors, or shards named by model.safetensors.index.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = {"model_type": "gemma3n", "text_config": {"model_type": "gemma3n_text", "num_hidden_layers": layers,
              "hidden_size_per_layer_input": d, "vocab_size_per_layer_input": vocab, "hidden_size": 8}}
    (folder / "config.json").write_text(json.dumps(config))
    table = torch.randn(vocab, layers * d, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    tensors = {"model.language_model.embed_tokens_per_layer.weight": table,
               "model.language_model.embed_tokens.weight": torch.zeros(vocab, 8, dtype=torch.bfloat16)}
    if sharded:
        names = sorted(tensors)
        files = {n: f"model-0000{i + 1}-of-00002.safetensors" for i, n in enumerate(names)}
        for n in names:
            save_file({n: tensors[n]}, str(folder / files[n]), metadata={"format": "pt"})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))
    else:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return table


@pytest.mark.parametrize("sharded", [False, True])
def test_an_hf_gemma3n_directory_imports_its_per_layer_table_without_flags(tmp_path, sharded):
    from memsvc.store.checkpoints import read_tensor

    table = write_gemma3n_dir(tmp_path / "gemma", sharded=sharded)
    rows, dtype = read_tensor(tmp_path / "gemma")
    assert dtype == "bfloat16" and rows.shape == (VOCAB, 3, 4)
    want = table.view(torch.int16).numpy().view(np.uint16).reshape(VOCAB, 3, 4)  # [V, L*d] -> [V, L, d], layer-major
    np.testing.assert_array_equal(rows[0:VOCAB], want)


def test_a_named_tensor_of_a_file_and_its_refusals(tmp_path):
    from safetensors.torch import save_file

    from memsvc.store.checkpoints import read_tensor

    fused = torch.randn(VOCAB, 12)
    save_file({"bank": fused}, str(tmp_path / "b.safetensors"))
    rows, dtype = read_tensor(tmp_path / "b.safetensors", "bank", num_layers=3)
    np.testing.assert_array_equal(rows[2:5], fused.numpy().reshape(VOCAB, 3, 4)[2:5])
    torch.save({"bank": fused}, tmp_path / "b.pt")
    np.testing.assert_array_equal(read_tensor(tmp_path / "b.pt", "bank", 2)[0][0:VOCAB], fused.numpy().reshape(VOCAB, 2, 6))
    with pytest.raises(InvalidArgument, match=r"layers: tensor 'bank' of shape \[37, 12\] does not split into 5 layers"):
        read_tensor(tmp_path / "b.safetensors", "bank", num_layers=5)
    with pytest.raises(InvalidArgument, match=r"tensor: 'nope' is not in b.safetensors"):
        read_tensor(tmp_path / "b.safetensors", "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InvalidArgument, match="no per-layer embedding table in its config.json; name one with --tensor"):
        read_tensor(tmp_path / "plain")


def test_memsvc_import_takes_a_checkpoint_directory_and_refuses_a_lone_shard(tmp_path):
    from click.testing import CliRunner

    from memsvc.cli import cli

    full = tables(3, seed=4)
    step = write_step(tmp_path / "0000000300", full, 4, stem_layers=[2, 4, 6])
    (tmp_path / "words.txt").write_text("\n".join(f"w{i}" for i in range(VOCAB)))
    run = CliRunner().invoke
    data = str(tmp_path / "kb")
    out = run(cli, ["import", str(step), "--vocab", str(tmp_path / "words.txt"), "--table", "stem", "--data", data])
    assert out.exit_code == 0, out.output
    assert "imported stem: 37 tokens x 3 layers x 24 (float32), feeding model layers [2, 4, 6] as version 1" in out.output
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb")) as kb:
        got = kb.lookup("stem", list(range(VOCAB)))
        np.testing.assert_array_equal(got.rows[got.inverse], expected(full))
    lone = run(cli, ["import", str(step / "stem_shards" / "stem_model_mp1.pt"), "--vocab", str(tmp_path / "words.txt"),
                     "--table", "shard", "--data", data])
    assert lone.exit_code == 1
    assert lone.output.startswith("Error: file: stem_model_mp1.pt is one model-parallel shard") and lone.output.count("\n") == 1


def test_import_through_a_server_keeps_model_layers_and_tokenizer(tmp_path):
    from click.testing import CliRunner

    from clients.client import MemoryClient
    from memsvc.cli import cli
    from tests.conftest import serving
    from tests.test_tokenizers import bert_uncased

    step = write_step(tmp_path / "0000000400", tables(2, seed=5), 2, stem_layers=[3, 1])
    vocab = bert_uncased(tmp_path)  # 15 pieces for 37 rows: ids past them get placeholder words
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb", create=True)):
        pass
    with serving(tmp_path / "kb") as address:
        out = CliRunner().invoke(cli, ["import", str(step), "--vocab", str(tmp_path / "tokenizer.json"), "--table", "stem",
                                       "--server", address])
        assert out.exit_code == 0, out.output
        with MemoryClient(address) as client:
            info = client.describe("stem")
            assert (info.model_layers, info.tokenizer, info.vocab_size) == ([3, 1], "tokenizer.json", VOCAB)
            words = client.vocabulary("stem")
            assert words[:len(vocab)] == vocab.words() and words[-1] == f"<token {VOCAB - 1}>"
            assert client.tokenizer("stem")[0] == "tokenizer.json"
