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
