"""Real tokenizers (editing/tokenizers.py, editing/tokens.py): small ones built in the test with the
`tokenizers`, `sentencepiece` and tiktoken formats, and the ids an entity takes in running text."""
import base64
import io

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from editing.tokens import Vocabulary
from memsvc.core.errors import InvalidArgument, NotFound

CORPUS = ["the capital of Spain is Madrid", "Spain borders France", "the capital of France is Paris",
          "in Spain the sun shines", "new york is a city", "the new house in york"] * 50


def bert_uncased(tmp_path):
    """A WordPiece tokenizer.json as BERT's (uncased normaliser, [CLS]/[SEP] template), saved with
    padding on, as many hub tokenizers are."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "capital", "of", "is", "paris", "new", "york", "el",
             "##bria", "##r", "france"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(length=128, pad_id=0)
    tok.save(str(tmp_path / "tokenizer.json"))
    return Vocabulary.from_file(tmp_path / "tokenizer.json")


def test_wordpiece_uncased_pieces_and_shared_words(tmp_path):
    vocab = bert_uncased(tmp_path)
    assert vocab.encoder.kind == "tokenizer.json"
    assert vocab.resolve("Paris") == vocab.id_of("paris")  # the normaliser lowercases what was typed
    assert vocab.encode_entity("Paris") == [vocab.id_of("paris")]  # no padding to 128 ids, no [CLS]/[SEP]
    ids = vocab.encode_entity("Elbriar")
    assert vocab.pieces(ids) == ["el", "##bria", "##r"]
    assert vocab.shared_pieces(ids) == ["el", "##bria", "##r"]
    assert vocab.shared_pieces(vocab.encode_entity("new york")) == ["new", "york"]
    assert vocab.shared_pieces([vocab.id_of("paris")]) == []
    with pytest.raises(NotFound, match=r"^token: 'Elbriar' is 3 pieces \(el, ##bria, ##r\), not one token"):
        vocab.resolve("Elbriar")
    with pytest.raises(NotFound, match=r"^entity: unknown token 'zq'$"):
        vocab.encode_entity("zq")


def byte_level_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def test_byte_level_bpe_takes_the_mid_sentence_form(tmp_path):
    tok = byte_level_bpe()
    tok.save(str(tmp_path / "tokenizer.json"))
    vocab = Vocabulary.from_file(tmp_path / "tokenizer.json")
    ids = vocab.encode_entity("Spain")
    assert vocab.pieces(ids) == ["ĠSpain"]  # what "... of Spain" reads, not the start-of-text "Spain"
    assert tok.encode("Spain").ids != ids
    assert vocab.resolve("Spain") == vocab.id_of("Spain")  # an exact token string is taken as typed
    assert vocab.resolve(" Spain") == ids[0]


def test_sentencepiece_model(tmp_path):
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=60,
                                           model_type="bpe", hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    vocab = Vocabulary.from_file(tmp_path / "tokenizer.model")
    assert vocab.encoder.kind == "sentencepiece"
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    assert vocab.encode_entity("Spain") == processor.encode("in Spain")[len(processor.encode("in")):]
    assert all(p.startswith("▁") for p in vocab.pieces(vocab.encode_entity("Madrid"))[:1])
    assert vocab.add("Atlantis") == processor.get_piece_size()
    assert vocab.encode_entity("Atlantis Spain")[0] == vocab.id_of("Atlantis")  # an injected word is matched whole


def test_tiktoken_rank_file(tmp_path):
    """A tiktoken file as Llama 3 ships it ('<base64 token> <rank>' lines): read as a tokenizer, not as words."""
    merges = [b" S", b"ai", b"ain", b" Sp", b" Spain", b"th", b"the"]
    tokens = [bytes([b]) for b in range(256)] + merges
    (tmp_path / "tokenizer.model").write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for r, t in enumerate(tokens)))
    vocab = Vocabulary.from_file(tmp_path / "tokenizer.model")
    assert vocab.encoder.kind == "tiktoken" and len(vocab) == 263
    assert vocab.encode_entity("Spain") == [256 + merges.index(b" Spain")]
    assert vocab.pieces(vocab.encode_entity("Spain")) == ["ĠSpain"]
    assert vocab.encoder.encode("Spain")[0] != vocab.encode_entity("Spain")  # start of text: other ids


def test_bad_tokenizer_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"\x08\x01\xff\xfe garbage \x00")
    with pytest.raises(InvalidArgument, match="^tokenizer: not a sentencepiece model"):
        Vocabulary.from_file(tmp_path / "bad.model")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="^tokenizer: invalid tokenizer.json"):
        Vocabulary.from_file(tmp_path / "bad.json")
    (tmp_path / "ranks.tiktoken").write_bytes(base64.b64encode(b"a") + b" 0\n" + base64.b64encode(b"b") + b" 5\n")
    with pytest.raises(InvalidArgument, match="^tokenizer: tiktoken ranks are not contiguous from 0$"):
        Vocabulary.from_file(tmp_path / "ranks.tiktoken")
    (tmp_path / "words.txt").write_text("Spain\nFrance\n")
    assert Vocabulary.from_file(tmp_path / "words.txt").encode_entity("France Spain") == [1, 0]


def test_a_table_keeps_its_tokenizer_and_edits_encode_words_with_it(tmp_path):
    """memsvc import stores the tokenizer with the table; --token, --entity and the dry run read
    words through it, locally and through a server; an injected word is encoded whole."""
    import numpy as np
    from click.testing import CliRunner

    from clients.client import MemoryClient
    from memsvc.cli import cli
    from memsvc.store import KnowledgeBase, StoreConfig
    from tests.conftest import serving

    vocab = bert_uncased(tmp_path)
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).standard_normal((len(vocab), 2, 4)).astype(np.float32))
    data = str(tmp_path / "kb")
    run = lambda *args: CliRunner().invoke(cli, [str(a) for a in args])
    out = run("import", tmp_path / "rows.npy", "--vocab", tmp_path / "tokenizer.json", "--table", "bert", "--data", data)
    assert out.exit_code == 0 and "words encoded by its tokenizer.json" in out.output, out.output
    assert run("tables", "--data", data).output.rstrip().endswith("\ttokenizer.json")

    paris, france = vocab.id_of("paris"), vocab.id_of("france")
    out = run("edit", "--data", data, "--table", "bert", "--token", "Paris", "--like", "France", "-m", "cased words")
    assert out.exit_code == 0 and "committed version 2: 2 rows changed" in out.output, out.output
    out = run("edit", "--data", data, "--table", "bert", "--entity", "New York", "--to", "Paris")
    assert out.exit_code == 1 and out.output.startswith("Error: --entity: 'New York' is 2 pieces other words share too (new, york)")
    out = run("edit", "--data", data, "--table", "bert", "--entity", "Elbriar", "--to", "Paris", "--dry-run")
    assert out.exit_code == 0 and "'Elbriar' -> el(11) ##bria(12) ##r(13) (pieces other words share" in out.output
    with KnowledgeBase(StoreConfig(data_dir=tmp_path / "kb")) as kb:
        assert kb.version == 2  # the refusal and the dry run wrote nothing
        rows = kb.lookup("bert", [paris, france]).in_request_order()
        np.testing.assert_array_equal(rows[0], rows[1])
        assert kb.inject_token("bert", "Atlantis", like=["paris"]).version == 3

    with serving(tmp_path / "kb") as address:
        out = run("edit", "--server", address, "--table", "bert", "--entity", "new york", "--to", "Atlantis",
                  "--shared-ok", "-m", "new york reads Atlantis")
        assert out.exit_code == 0 and "committed version 4: 4 rows changed" in out.output, out.output
        with MemoryClient(address) as client:
            info = client.describe("bert")
            assert info.tokenizer == "tokenizer.json" and info.model_layers == []
            rows = client.lookup("bert", ["new", "york", "Atlantis"]).in_request_order()
            np.testing.assert_array_equal(rows[0], rows[2])
            np.testing.assert_array_equal(rows[1], rows[2])
            assert Vocabulary.of(client, "bert").encode_entity("Atlantis") == [len(vocab)]
            from clients.search import SearchClient

            found = SearchClient(client).search("bert", 0, tokens=["Capital"], k=1)  # typed, read uncased
            assert found.ids[:, 0].tolist() == [vocab.id_of("capital")]  # its own row is nearest
