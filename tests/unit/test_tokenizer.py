import json

import pytest
from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, decoders

from unmask.server.tokenizer import ChatTemplateError, IncrementalDetokenizer, Tokenizer
from tests.helpers import BOS_ID, EOT_ID


def test_llada_chat_template_renders_like_the_reference(dense_ckpt):
    tok = Tokenizer.from_pretrained(dense_ckpt)
    text = tok.render_chat([{"role": "user", "content": "  HI "}])
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHI<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # the LLaDA template ignores add_generation_prompt: the assistant header is always appended
    assert tok.render_chat([{"role": "user", "content": "A"}], add_generation_prompt=False).endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    multi = tok.render_chat([{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                             {"role": "user", "content": "C"}])
    assert multi.count("<|startoftext|>") == 1 and multi.count("<|eot_id|>") == 3


def test_encode_never_adds_bos(dense_ckpt):
    tok = Tokenizer.from_pretrained(dense_ckpt)
    assert BOS_ID not in tok.encode("HELLO")
    ids = tok.encode_chat([{"role": "user", "content": "HELLO"}])
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1 and EOT_ID in ids
    assert tok.decode(ids) == tok.decode(ids, skip_special_tokens=True)
    assert "<|eot_id|>" in tok.decode(ids, skip_special_tokens=False)


def test_missing_template_is_a_clear_error(tmp_path, dense_ckpt):
    cfg = json.loads((dense_ckpt / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (tmp_path / "tokenizer.json").write_text((dense_ckpt / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer.from_pretrained(tmp_path).render_chat([{"role": "user", "content": "A"}])


def test_template_errors_are_wrapped(tmp_path, dense_ckpt):
    (tmp_path / "tokenizer.json").write_text((dense_ckpt / "tokenizer.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{{ raise_exception('only user turns') }}"}))
    with pytest.raises(ChatTemplateError, match="only user turns"):
        Tokenizer.from_pretrained(tmp_path).render_chat([{"role": "user", "content": "A"}])


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def _byte_level_tokenizer() -> Tokenizer:
    """A byte-level BPE with no merges: every UTF-8 byte is its own token, so multi-byte characters
    arrive split across ids, as with real byte-level tokenizers."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return Tokenizer(tok, {})


def test_incremental_detokenizer_never_splits_a_character():
    tok = _byte_level_tokenizer()
    text = "héllo → 世界 🎉 ok"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # multi-byte characters span several ids
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add([i]) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text and detok.text == text
    assert all("\ufffd" not in p for p in pieces)


def test_incremental_detokenizer_in_chunks():
    tok = _byte_level_tokenizer()
    text = "αβγ δεζ 🙂🙃 end"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    out = "".join(detok.add(ids[i:i + 3]) for i in range(0, len(ids), 3)) + detok.flush()
    assert out == text
