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
