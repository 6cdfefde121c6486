from tunesmith.generation import Sampling
from tunesmith.runtime.chatbot import load_chatbot


def test_batched_greedy_equals_one_at_a_time(tiny_run):
    bot = load_chatbot(tiny_run, device="cpu")
    convs = [
        [{"role": "user", "content": q}] for q in ["你是谁？", "皇上驾到！", "今天天气怎么样？请说说", "好"]
    ]
    greedy = Sampling(temperature=0, max_new_tokens=12)
    batch = bot.generate_batch(convs, greedy)
    single = [bot.generate_batch([c], greedy)[0] for c in convs]
    assert [b.text for b in batch] == [s.text for s in single]
    assert [b.completion_tokens for b in batch] == [s.completion_tokens for s in single]
    assert all(b.completion_tokens <= 12 for b in batch)
    assert all(b.stopped or b.completion_tokens == 12 for b in batch)  # stopped, or ran to the limit
    assert batch[0].text == bot.answer(convs[0], greedy)
    base = bot.generate_batch(convs[:1], greedy, base=True)[0]
    assert base.prompt_tokens == batch[0].prompt_tokens


def test_whole_characters_holds_back_a_cut_character():
    from tunesmith.runtime.chatbot import REPLACEMENT, whole_characters

    assert list(whole_characters(["你好", "吗" + REPLACEMENT])) == ["你好", "吗"]
    assert list(whole_characters(["a" + REPLACEMENT, REPLACEMENT + "b"])) == ["a", REPLACEMENT * 2 + "b"]
    assert list(whole_characters([REPLACEMENT])) == []


def test_answers_cut_by_the_token_limit_never_end_in_half_a_character(tiny_run, monkeypatch):
    """The model emits 你好 and then the first byte of 吗 when the limit hits (a byte-level
    tokenizer splits a character over several tokens): neither chat nor batches show U+FFFD."""
    import torch

    from tunesmith.runtime.chatbot import REPLACEMENT, load_chatbot

    bot = load_chatbot(tiny_run, device="cpu")
    tok = bot.fmt.tokenizer
    first_byte = tok.convert_tokens_to_ids(
        tok.convert_ids_to_tokens(tok.encode("吗", add_special_tokens=False))[0][0]
    )
    emitted = [*tok.encode("你好", add_special_tokens=False), first_byte]
    assert tok.decode(emitted).endswith(REPLACEMENT)  # what a plain decode shows

    def generate(input_ids, streamer=None, **kw):
        if streamer is not None:
            streamer.put(input_ids[0])
            for t in emitted:
                streamer.put(torch.tensor([t]))
            streamer.end()
        tail = torch.tensor([emitted] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)

    monkeypatch.setattr(bot.model, "generate", generate)
    msgs = [{"role": "user", "content": "皇上驾到"}]
    assert bot.answer(msgs) == "你好"
    assert "".join(bot.stream(msgs)) == "你好"
    (batched,) = bot.generate_batch([msgs])
    assert batched.text == "你好"
