"""Edit semantics: token resolution, entity modes, their RowWrites, neighbours, CLI parsers."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from editing.entity import (EntityEdit, assign_targets, entity_edit_from_text, entity_row_ops, parse_override,
                            parse_vector_arg, plan_entity_edit)
from editing.neighbours import nearest_tokens
from editing.rows import plan_row_ops
from editing.tokens import Vocabulary
from memsvc.core.errors import InvalidArgument, NotFound, OutOfRange

WORDS = ["Spain", "Germany", "United", "Kingdom", "New", "York", "City", "München", "東京"]
NUM_LAYERS, DIM = 3, 4


@pytest.fixture
def vocab():
    return Vocabulary(WORDS)


@pytest.fixture
def table():
    """(V, L, d) rows with distinct small integers, so means are exact in float32."""
    return np.arange(len(WORDS) * NUM_LAYERS * DIM, dtype=np.float32).reshape(len(WORDS), NUM_LAYERS, DIM)


def reader(table):
    return lambda ids: table[ids]


def apply(table, writes):
    """The table after RowWrites, as a store would write them."""
    out = table.copy()
    out[writes.token_ids, writes.layers] = writes.vectors
    return out


def edited(vocab, table, source, target, mode, layers=()):
    edit = entity_edit_from_text(vocab, source, target, mode, layers)
    return apply(table, plan_entity_edit(edit, reader(table), NUM_LAYERS, DIM))


# --- tokens -------------------------------------------------------------------------------


def test_word_list_ids_words_and_unicode(vocab):
    assert len(vocab) == len(WORDS)
    assert vocab.id_of("München") == 7 and vocab.word_of(8) == "東京"
    assert vocab.encode_entity("New York  City") == [4, 5, 6]
    assert vocab.encode_entity("東京") == [8]


def test_unknown_token_errors_name_the_field(vocab):
    with pytest.raises(NotFound) as e:
        vocab.id_of("xyz")
    assert str(e.value) == "token: unknown token 'xyz'"
    with pytest.raises(NotFound) as e:
        entity_edit_from_text(vocab, "Spain", "United Kingdm")
    assert str(e.value) == "target: unknown token 'Kingdm'"
    with pytest.raises(NotFound, match="^source: unknown token 'Spian'$"):
        entity_edit_from_text(vocab, "Spian", "Germany")
    with pytest.raises(InvalidArgument, match="^source: empty entity$"):
        entity_edit_from_text(vocab, "  ", "Germany")
    with pytest.raises(OutOfRange, match=r"^token_id: token id 9 out of range \[0, 9\)$"):
        vocab.word_of(9)


def test_duplicate_words_refused():
    with pytest.raises(InvalidArgument, match="^words: duplicate word 'a' at ids 0 and 2$"):
        Vocabulary(["a", "b", "a"])


def test_injection_gets_next_ids_and_refuses_bad_words(vocab):
    assert vocab.add("Atlantis") == 9
    assert vocab.add("Ψ") == 10
    assert len(vocab) == 11 and vocab.word_of(9) == "Atlantis"
    assert vocab.encode_entity("Atlantis Spain") == [9, 0]
    with pytest.raises(InvalidArgument, match=r"^token: 'Spain' already exists \(id 0\)$"):
        vocab.add("Spain")
    for bad in ("", "   ", "\t\n"):
        with pytest.raises(InvalidArgument, match="non-empty, non-whitespace"):
            vocab.add(bad)
    assert len(vocab) == 11


def word_level_tokenizer_json(words):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[BOS]"])
    return tok.to_str()


def test_tokenizer_json_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(word_level_tokenizer_json(WORDS), encoding="utf-8")
    vocab = Vocabulary.from_tokenizer_file(path)
    assert len(vocab) == len(WORDS) + 2  # [UNK] + words + [BOS]
    assert vocab.id_of("[BOS]") == len(WORDS) + 1
    assert vocab.id_of("Germany") == 2 and vocab.word_of(8) == "München"
    # The tokenizer's encoding, without special tokens, and unicode words.
    assert vocab.encode_entity("United Kingdom") == [3, 4]
    assert vocab.encode_entity("東京") == [9]
    with pytest.raises(NotFound, match="^entity: unknown token 'Paris'$"):
        vocab.encode_entity("Spain Paris")
    # Injection: the next id, and the tokenizer now encodes the new token as one piece.
    assert vocab.add("Zorb lax") == len(WORDS) + 2
    assert vocab.encode_entity("Spain Zorb lax") == [1, len(WORDS) + 2]


def test_tokenizer_json_errors(tmp_path):
    with pytest.raises(InvalidArgument, match="^tokenizer: cannot read"):
        Vocabulary.from_tokenizer_file(tmp_path / "missing.json")
    with pytest.raises(InvalidArgument, match="^tokenizer: invalid tokenizer.json"):
        Vocabulary.from_tokenizer_json("{not json")
    spec = json.loads(word_level_tokenizer_json(["a", "b"]))
    spec["model"]["vocab"] = {"[UNK]": 0, "a": 1, "b": 3}
    with pytest.raises(InvalidArgument, match=r"^tokenizer: token ids are not contiguous \(id 2 is missing\)$"):
        Vocabulary.from_tokenizer_json(json.dumps(spec))


# --- entity modes -------------------------------------------------------------------------


def test_assignments_of_every_mode():
    assert assign_targets(2, 2, "one_to_one") == [[0], [1]]
    assert assign_targets(3, 2, "average") == [[0, 1]] * 3
    assert assign_targets(5, 2, "copy") == [[0], [1], [0], [1], [0]]
    assert assign_targets(1, 3, "copy") == [[0]]
    assert assign_targets(3, 2, "right_pad") == [[0], [1], []]
    assert assign_targets(3, 2, "left_pad") == [[], [0], [1]]
    assert assign_targets(2, 3, "right_pad") == [[0], [1]]  # truncates the target's tail
    assert assign_targets(2, 3, "left_pad") == [[1], [2]]  # truncates the target's head
    assert assign_targets(2, 2, "auto") == [[0], [1]]
    assert assign_targets(3, 2, "auto") == [[0, 1]] * 3


def test_one_to_one_same_length(vocab, table):
    out = edited(vocab, table, "United Kingdom", "New York", "one_to_one")
    np.testing.assert_array_equal(out[2], table[4])
    np.testing.assert_array_equal(out[3], table[5])
    np.testing.assert_array_equal(np.delete(out, [2, 3], 0), np.delete(table, [2, 3], 0))


def test_one_to_one_refuses_different_lengths(vocab, table):
    with pytest.raises(InvalidArgument, match="^mode: one_to_one needs entities of the same length"):
        edited(vocab, table, "Spain", "United Kingdom", "one_to_one")


def test_average_two_tokens_onto_three(vocab, table):
    out = edited(vocab, table, "United Kingdom", "New York City", "average")
    mean = (table[4] + table[5] + table[6]) / 3
    np.testing.assert_allclose(out[2], mean, rtol=1e-6)
    np.testing.assert_allclose(out[3], mean, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(out, [2, 3], 0), np.delete(table, [2, 3], 0))


def test_copy_repeats_target_cyclically(vocab, table):
    out = edited(vocab, table, "New York City", "United Kingdom", "copy")
    np.testing.assert_array_equal(out[[4, 5, 6]], table[[2, 3, 2]])
    out = edited(vocab, table, "Spain", "New York City", "copy")
    np.testing.assert_array_equal(out[0], table[4])


def test_right_and_left_pad(vocab, table):
    out = edited(vocab, table, "New York City", "United Kingdom", "right_pad")
    np.testing.assert_array_equal(out[[4, 5, 6]], table[[2, 3, 6]])  # City keeps its rows
    out = edited(vocab, table, "New York City", "United Kingdom", "left_pad")
    np.testing.assert_array_equal(out[[4, 5, 6]], table[[4, 2, 3]])  # New keeps its rows
    out = edited(vocab, table, "Spain", "United Kingdom", "right_pad")
    np.testing.assert_array_equal(out[0], table[2])
    out = edited(vocab, table, "Spain", "United Kingdom", "left_pad")
    np.testing.assert_array_equal(out[0], table[3])


def test_auto_picks_one_to_one_or_average(vocab, table):
    np.testing.assert_array_equal(
        edited(vocab, table, "United Kingdom", "New York", "auto"),
        edited(vocab, table, "United Kingdom", "New York", "one_to_one"),
    )
    np.testing.assert_array_equal(
        edited(vocab, table, "Spain", "New York", "auto"),
        edited(vocab, table, "Spain", "New York", "average"),
    )


def test_unknown_mode_refused(vocab, table):
    with pytest.raises(InvalidArgument, match="^mode: unknown entity mode 'avg'"):
        edited(vocab, table, "Spain", "Germany", "avg")


def test_chosen_layers_only(vocab, table):
    out = edited(vocab, table, "Spain", "New York", "average", layers=[0, 2])
    np.testing.assert_allclose(out[0, [0, 2]], (table[4, [0, 2]] + table[5, [0, 2]]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(out[0, 1], table[0, 1])
    with pytest.raises(OutOfRange, match=r"^layers: layer 3 out of range \[0, 3\)$"):
        edited(vocab, table, "Spain", "New York", "average", layers=[3])


def test_swap_reads_targets_before_writing(vocab, table):
    """'United Kingdom' -> 'Kingdom United': each token takes the other's ORIGINAL rows."""
    out = edited(vocab, table, "United Kingdom", "Kingdom United", "one_to_one")
    np.testing.assert_array_equal(out[[2, 3]], table[[3, 2]])


def test_single_token_assignments_are_copy_ops_without_rows(vocab):
    edit = entity_edit_from_text(vocab, "New York City", "United Kingdom", "copy")
    ops = entity_row_ops(edit)
    assert [(op.op, op.token_id, op.source_token_id) for op in ops] == [("copy", 4, 2), ("copy", 5, 3), ("copy", 6, 2)]
    with pytest.raises(InvalidArgument, match="^read_rows: mode average needs the table's rows"):
        entity_row_ops(EntityEdit(source=[0], target=[4, 5], mode="average"))


def test_plan_gives_expected_row_writes(vocab, table):
    edit = entity_edit_from_text(vocab, "Spain", "New York", "average", layers=[1])
    writes = plan_entity_edit(edit, reader(table), NUM_LAYERS, DIM)
    assert writes.token_ids.tolist() == [0] and writes.layers.tolist() == [1]
    np.testing.assert_allclose(writes.vectors, [(table[4, 1] + table[5, 1]) / 2], rtol=1e-6)
    assert writes.vectors.dtype == np.float32
    # The same ops through plan_row_ops directly (e.g. a per-request override) give the same rows.
    again = plan_row_ops(entity_row_ops(edit, reader(table)), reader(table), reader(table), NUM_LAYERS, DIM)
    np.testing.assert_array_equal(again.vectors, writes.vectors)


def test_identity_edit_refused(vocab, table):
    with pytest.raises(InvalidArgument, match="^target: the edit changes nothing"):
        edited(vocab, table, "Spain", "Spain", "auto")


# --- neighbours ---------------------------------------------------------------------------


def test_nearest_tokens_match_brute_force():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((200, 16)).astype(np.float32)
    rows[7] = 0  # a zero row has cosine 0, never NaN
    v = rng.standard_normal(16).astype(np.float32)
    cos = [float(r @ v / (np.linalg.norm(r) * np.linalg.norm(v))) if r.any() else 0.0 for r in rows]
    expected = sorted(range(200), key=lambda i: -cos[i])
    got = nearest_tokens(v, rows, k=5, exclude=(expected[0],))
    assert [i for i, _ in got] == expected[1:6]
    np.testing.assert_allclose([c for _, c in got], [cos[i] for i in expected[1:6]], rtol=1e-5)
    assert nearest_tokens(rows[3], rows, k=1) == [(3, pytest.approx(1.0))]
    assert len(nearest_tokens(v, rows[:3], k=5)) == 3


def test_nearest_tokens_ties_by_id_and_bad_shape():
    rows = np.array([[1, 0], [2, 0], [0, 1]], dtype=np.float32)
    assert [i for i, _ in nearest_tokens(np.array([1, 0]), rows, k=3)] == [0, 1, 2]
    with pytest.raises(InvalidArgument, match=r"^vector: expected shape \(2,\)"):
        nearest_tokens(np.ones(3), rows)


# --- CLI argument parsers -----------------------------------------------------------------


def test_parse_override():
    assert parse_override("Spain=Germany") == ("Spain", "Germany")
    assert parse_override(" United Kingdom = 東京 ") == ("United Kingdom", "東京")
    for bad, msg in [
        ("SpainGermany", "expected SOURCE=TARGET"),
        ("a=b=c", "expected SOURCE=TARGET"),
        ("=Germany", "source is empty"),
        ("Spain= ", "target is empty"),
    ]:
        with pytest.raises(InvalidArgument, match=f"^override: {msg}"):
            parse_override(bad)


def test_parse_vector_arg(tmp_path):
    np.testing.assert_array_equal(parse_vector_arg("0.5, -1,2e-1"), np.float32([0.5, -1, 0.2]))
    assert parse_vector_arg("1,2", dim=2).dtype == np.float32
    path = tmp_path / "v.npy"
    np.save(path, np.arange(6, dtype=np.float64).reshape(2, 3))
    np.testing.assert_array_equal(parse_vector_arg(str(path), dim=3), np.arange(6, dtype=np.float32).reshape(2, 3))
    for bad, msg in [
        ("", "empty"),
        ("1,,2", "'' is not a number"),
        ("1,abc", "'abc' is not a number"),
        ("1,nan", "contains NaN or Inf"),
        ("1,inf", "contains NaN or Inf"),
        ("1e39", "contains NaN or Inf"),  # overflows float32
        ("1,2,3", "expected 2 values, got 3"),
        (str(tmp_path / "missing.npy"), "cannot read"),
    ]:
        with pytest.raises(InvalidArgument, match=f"^--vector: {msg}"):
            parse_vector_arg(bad, dim=2)
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(InvalidArgument, match="^--vector: contains NaN or Inf$"):
        parse_vector_arg(str(tmp_path / "nan.npy"))


def test_repeated_source_token_takes_its_last_assignment(vocab, table):
    out = edited(vocab, table, "New New", "York City", "one_to_one")
    np.testing.assert_array_equal(out[4], table[6])
    np.testing.assert_array_equal(np.delete(out, 4, 0), np.delete(table, 4, 0))


def test_inject_request_round_trip_and_input_embeddings():
    import torch

    from editing.inject import InjectedToken, inject_request, input_embeddings, parse_inject_request
    from memsvc.core.values import EditRequest

    request = inject_request("Espana", ["Spain", "Gaul"], [0, 5])
    assert request.subject == "Espana" and parse_inject_request(request) == {"source": "like", "like": ["Spain", "Gaul"], "like_ids": [0, 5]}
    assert parse_inject_request(inject_request("Vec"))["source"] == "vector"
    assert parse_inject_request(EditRequest(target_new="Berlin")) is None
    tok_emb = torch.arange(10.0).reshape(5, 2)  # trained vocabulary of 5
    tokens = [InjectedToken(5, "A", "like", [1, 3]), InjectedToken(6, "B", "like", [5]), InjectedToken(8, "C", "vector")]
    extra, problems = input_embeddings(tok_emb, None, tokens, 4)  # id 7: removed by a revert
    assert extra[:2].tolist() == [[4.0, 5.0], [4.0, 5.0]]  # B is like A, built first
    assert problems == {7: "token id 7 does not exist at this version",
                        8: "'C' was injected with --vector and the model has no null input embedding; "
                           "inject it --like a known token to use it in prompts"}
    extra, problems = input_embeddings(tok_emb, torch.tensor([-1.0, -2.0]), tokens, 4)
    assert extra[3].tolist() == [-1.0, -2.0] and list(problems) == [7]


def test_inject_commit_records_its_source(kb):
    from editing.inject import inject_commits, injected_tokens, parse_inject_request

    like = kb.inject_token("stem", "Atlantis", like=["Spain", "France"]).version
    vec = kb.inject_token("stem", "Gaul", vector=np.ones(8)).version
    with pytest.raises(InvalidArgument, match=r"^vector: expected 8 values \(or 3x8\), got shape \(2,\)$"):
        kb.inject_token("stem", "Gallia", vector=np.ones(2))  # was a numpy broadcast error
    assert parse_inject_request(kb.show(like)[0].request) == {"source": "like", "like": ["Spain", "France"], "like_ids": [0, 2]}
    assert parse_inject_request(kb.show(vec)[0].request) == {"source": "vector", "like": [], "like_ids": []}
    kb.revert(like)
    words = kb.vocabulary("stem")
    assert [(t.token_id, t.word, t.source, t.version) for t in injected_tokens(words, 64, inject_commits(kb, "stem", kb.version, {"Gaul"}))] \
        == [(65, "Gaul", "vector", vec)]
