"""Stop strings, held-back text and the repetition guard (pure text; no model, no server)."""

import pytest

from tunesmith.serving.guard import RepetitionGuard, TextTracker


def feed(tracker: TextTracker, text: str, step: int = 1) -> list[str]:
    """Grow the answer ``step`` characters at a time, like a token stream; return what was released."""
    out = [tracker.update(text[:i]) for i in range(step, len(text) + 1, step)]
    return [*out, tracker.close("length")]


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("臣妾做不到啊！" * 4, "臣妾做不到啊！"),
        ("Hello there. " + "I am here. " * 3, "I am here. "),
        ("哈" * 30, "哈"),
        ("abc" * 9, "abc"),
    ],
)
def test_guard_finds_a_loop_at_the_end(text, phrase):
    loop = RepetitionGuard().check(text)
    assert loop is not None
    assert set(loop.phrase) == set(phrase) and len(loop.phrase) == len(phrase)
    assert text[: loop.cut].endswith(loop.phrase)
    assert loop.phrase not in text[: loop.cut - len(loop.phrase)] or text.startswith(loop.phrase * 2)


@pytest.mark.parametrize(
    "text",
    [
        "臣妾做不到啊！臣妾做不到啊！",  # twice is emphasis, not a loop
        "哈哈哈哈，皇上真会说笑。",  # short laughter
        "-" * 60,  # punctuation only
        "\n" * 40,
        "皇上，臣妾今日去了御花园。皇上，臣妾又去了长春宫。皇上，臣妾乏了。",  # a repeated opener, apart
        "",
    ],
)
def test_guard_leaves_ordinary_text_alone(text):
    assert RepetitionGuard().check(text) is None


def test_not_streaming_a_loop_is_cut_after_its_first_copy():
    t = TextTracker([], RepetitionGuard(), stream=False)
    text = "好的。" + "本宫知道了。" * 6
    released = "".join(feed(t, text))
    assert t.finish == "repetition"
    assert released == "好的。本宫知道了。"
    assert t.loop.phrase == "本宫知道了。"


def test_streaming_a_loop_stops_where_it_was_noticed():
    t = TextTracker([], RepetitionGuard(), stream=True)
    text = "好的。" + "本宫知道了。" * 6
    pieces = feed(t, text)
    released = "".join(pieces)
    assert t.finish == "repetition"
    assert text.startswith(released) and len(released) < len(text)
    assert released.count("本宫知道了。") <= 4


def test_stop_string_never_leaks_even_split_across_pieces():
    text = "皇上万岁。END后面不要"
    for step in (1, 2, 3, 5):
        t = TextTracker(["END"], stream=True)
        pieces = feed(t, text, step)
        assert "".join(pieces) == "皇上万岁。"
        assert t.finish == "stop"
        assert not any("E" in p for p in pieces)


def test_earliest_of_several_stop_strings_wins():
    t = TextTracker(["。", "，"], stream=False)
    assert "".join(feed(t, "你好，皇上。")) == "你好"


def test_a_partial_stop_prefix_is_released_when_the_answer_ends():
    t = TextTracker(["END"], stream=True)
    assert "".join(feed(t, "the EN")) == "the EN"
    assert t.finish == "length"


def test_partial_utf8_character_is_held_back():
    t = TextTracker([], stream=True)
    assert t.update("皇\ufffd") == "皇"
    assert t.update("皇上") == "上"
    assert t.close("stop") == ""
    t = TextTracker([], stream=True)
    t.update("半个\ufffd")
    assert t.close("length") == ""  # a dangling partial character is dropped, not sent as U+FFFD


def test_job_with_real_tokenizer_reports_repetition(tiny_qwen):
    """A row that loops, token by token, ends with finish "repetition" and the phrase."""
    from tunesmith.generation import Sampling
    from tunesmith.modeling import load_tokenizer
    from tunesmith.runtime.chatbot import Chatbot
    from tunesmith.serving.backends import GenRequest, ServedModel
    from tunesmith.serving.transformers_backend import _Job
    from tunesmith.templates import ChatFormat

    tok = load_tokenizer(tiny_qwen)
    bot = Chatbot(None, ChatFormat(tok), card=None, defaults=Sampling())
    model = ServedModel("m", bot, None, tiny_qwen, 512)
    events = []
    req = GenRequest(model, [1, 2], Sampling(max_new_tokens=200), guard=True, stream=True)
    job = _Job(req, events.append, req.tracker(), frozenset(bot.stop_ids()))
    for t in tok("皇上万福，" + "臣妾告退了。" * 8, add_special_tokens=False)["input_ids"]:
        if not job.done:
            job.push(t)
    assert job.done
    final = events[-1]
    assert final.finish == "repetition" and final.repeated_phrase == "臣妾告退了。"
    assert 0 < final.completion_tokens < 200
    streamed = "".join(e.text for e in events)
    assert streamed.startswith("皇上万福，臣妾告退了。")
