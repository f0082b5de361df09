import pytest

from artbank_pl.errors import ArtbankError
from artbank_pl.tokenizer import (
    CLIP_VOCAB_SIZE,
    TokenizerError,
    add_placeholder_tokens,
    build_clip_tokenizer,
    expand_placeholder,
    placeholder_token,
    single_token_id,
)


def test_offline_tokenizer_is_the_real_clip_vocabulary():
    tok = build_clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE
    # ids of OpenAI's CLIP tokenizer for the same text
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77


def test_build_returns_independent_copies():
    first = build_clip_tokenizer()
    add_placeholder_tokens(first, ["<x>"], 2)
    assert len(build_clip_tokenizer()) == CLIP_VOCAB_SIZE


def test_placeholders_become_single_consecutive_tokens():
    tok = build_clip_tokenizer()
    ids = add_placeholder_tokens(tok, [placeholder_token("Van Gogh"), "<hokusai>"], 3)
    assert ids == [[49408, 49409, 49410], [49411, 49412, 49413]]
    text = expand_placeholder("a painting in the style of <van-gogh>", "<van-gogh>", 3)
    assert text.endswith("<van-gogh> <van-gogh>_1 <van-gogh>_2")
    assert tok(text).input_ids[-4:] == [49408, 49409, 49410, 49407]


def test_placeholder_names_and_errors():
    assert placeholder_token("Claude Monet (1840)") == "<claude-monet-1840>"
    with pytest.raises(TokenizerError, match="no letters"):
        placeholder_token("???")
    tok = build_clip_tokenizer()
    with pytest.raises(TokenizerError, match="unique"):
        add_placeholder_tokens(tok, ["<a>", "<a>"], 1)
    with pytest.raises(ArtbankError, match="initializer_token 'watercolour painting'"):
        single_token_id(tok, "watercolour painting")
    assert single_token_id(tok, "painting") == tok("painting").input_ids[1]
