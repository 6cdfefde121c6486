"""The OpenAI-compatible server, live on 127.0.0.1 and driven by the official openai client."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from threads import one_thread  # noqa: E402
from tunesmith.generation import Sampling  # noqa: E402
from tunesmith.serving.app import create_app  # noqa: E402
from tunesmith.serving.server import ServerThread, build_backend  # noqa: E402

KEY = "test-key-123"
Q = [{"role": "user", "content": "你是谁？"}]


def scaled_copy(run_dir, dest, factor: float):
    """A second run dir on the same base model: the adapter's lora_B weights scaled."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, dest)
    f = dest / "adapter" / "adapter_model.safetensors"
    weights = load_file(f)
    save_file({k: (v * factor if "lora_B" in k else v) for k, v in weights.items()}, f)
    return dest


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    alt = scaled_copy(tiny_run, tmp_path_factory.mktemp("alt") / "alt", 3.0)
    backend = build_backend({"tiny": tiny_run, "alt": alt}, device="cpu", batch_wait_ms=30)
    app = create_app(backend, api_key=KEY)
    with one_thread(), ServerThread(app) as srv:
        srv.backend = backend
        srv.app = app
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    headers["content-type"] = "application/json"
    return httpx.post(server.url + path, content=content, headers=headers, timeout=60, **kw)


def test_models_lists_adapters_and_base(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny", "alt", "base"}
    assert models["tiny"].owned_by == "tunesmith"
    assert client.models.retrieve("alt").parent == "base"


def test_greedy_chat_equals_batched_generation(server, client):
    r = client.chat.completions.create(model="tiny", messages=Q, max_tokens=12, temperature=0)
    bot = server.backend.models["tiny"].bot
    with server.backend.lock:  # the worker may still be leaving its last batch
        ref = bot.generate_batch([Q], Sampling(temperature=0, max_new_tokens=12))[0]
    assert r.choices[0].message.content.strip() == ref.text.rstrip("\ufffd")
    assert r.usage.prompt_tokens == ref.prompt_tokens
    assert r.usage.completion_tokens == ref.completion_tokens
    assert r.choices[0].finish_reason == ("stop" if ref.stopped else "length")
    assert r.object == "chat.completion" and r.model == "tiny"


def test_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model="tiny", messages=Q, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=Q,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_model_field_picks_adapter_or_base(server, client):
    answers = {
        m: client.chat.completions.create(model=m, messages=Q, max_tokens=12, temperature=0)
        .choices[0]
        .message.content
        for m in ("tiny", "alt", "base")
    }
    bot = server.backend.models["tiny"].bot
    with server.backend.lock:
        base = bot.generate_batch([Q], Sampling(temperature=0, max_new_tokens=12), base=True)[0]
    assert answers["base"].strip() == base.text.rstrip("\ufffd")
    assert len(set(answers.values())) > 1, answers  # three models, not one


def test_concurrent_requests_share_a_batch_and_match_sequential(server, client):
    prompts = [[{"role": "user", "content": f"问题{i}：你好吗？"}] for i in range(6)]
    models = ["tiny", "alt", "base"] * 2
    sequential = [
        client.chat.completions.create(model=m, messages=p, max_tokens=8, temperature=0)
        .choices[0]
        .message.content
        for m, p in zip(models, prompts, strict=True)
    ]
    metrics = server.app.state.metrics.registry
    before = metrics.get_sample_value("tunesmith_batch_size_count")
    results = [None] * 6

    def ask(i):
        r = client.chat.completions.create(model=models[i], messages=prompts[i], max_tokens=8, temperature=0)
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = metrics.get_sample_value("tunesmith_batch_size_count") - before
    assert results == sequential  # mixed-adapter batches answer as one-at-a-time does
    assert batches < 6  # some requests were served together


def test_text_completions_with_several_prompts(client):
    r = client.completions.create(model="base", prompt=["皇上", "你好"], max_tokens=5, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 0
    one = client.completions.create(model="base", prompt="你好", max_tokens=5, temperature=0)
    assert one.choices[0].text == r.choices[1].text
    streamed = list(
        client.completions.create(model="base", prompt="你好", max_tokens=5, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == one.choices[0].text


def test_stop_string_ends_the_answer_before_it(client):
    kw = dict(model="tiny", messages=Q, max_tokens=12, temperature=0)
    text = client.chat.completions.create(**kw).choices[0].message.content
    assert len(text) >= 3, text
    stop = text[2:4]
    r = client.chat.completions.create(**kw, stop=[stop, "never-there"])
    assert r.choices[0].message.content == text[: text.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.find(stop)]


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model="tiny", messages=Q, max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw, extra_body={"top_k": 40, "repetition_penalty": 1.0})
    c = client.chat.completions.create(**kw).choices[0].message.content
    assert a == c
    assert b.choices[0].message.content is not None


TOO_LONG = [{"role": "user", "content": "皇上万福金安 " * 400}]
OK = {"model": "tiny", "messages": Q, "max_tokens": 2}


@pytest.mark.parametrize(
    "body, status, param",
    [
        ("{not json", 400, None),
        ("[]", 400, None),
        ({"messages": Q}, 400, "model"),
        ({**OK, "model": "nope"}, 404, "model"),
        ({**OK, "messages": "hi"}, 400, "messages"),
        ({**OK, "messages": []}, 400, "messages"),
        ({**OK, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
        ({**OK, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content.str"),
        ({**OK, "temperature": "0.5"}, 400, "temperature"),
        ({**OK, "temperature": 2.5}, 400, "temperature"),
        ({**OK, "top_p": 0}, 400, "top_p"),
        ({**OK, "top_p": 1.5}, 400, "top_p"),
        ({**OK, "top_k": -5}, 400, "top_k"),
        ({**OK, "repetition_penalty": 0}, 400, "repetition_penalty"),
        ({**OK, "max_tokens": 0}, 400, "max_tokens"),
        ({**OK, "max_tokens": -3}, 400, "max_tokens"),
        ({**OK, "max_tokens": 1.5}, 400, "max_tokens"),
        ({**OK, "max_tokens": 10_000}, 400, "max_tokens"),
        ({**OK, "max_tokens": None, "messages": TOO_LONG}, 400, "messages"),
        ({**OK, "stream": "yes"}, 400, "stream"),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({**OK, "stop": [""]}, 400, "stop"),
        ({**OK, "n": 2}, 400, "n"),
        ({**OK, "seed": -1}, 400, "seed"),
        ({**OK, "presence_penalty": 0.5}, 400, "presence_penalty"),
        ({**OK, "tools": [{"type": "function"}]}, 400, "tools"),
        ({**OK, "messages": [*Q, {"role": "assistant", "content": "x"}]}, 400, "messages"),
    ],
)
def test_bad_chat_requests_get_openai_shaped_errors(server, body, status, param):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param, err


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "base", "prompt": [1, 2, 3]}, "prompt.str"),
        ({"model": "base", "prompt": []}, "prompt"),
        ({"model": "base", "prompt": "x", "echo": True}, "echo"),
        ({"model": "base", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "base", "prompt": "皇上 " * 600}, "prompt"),
    ],
)
def test_bad_completion_requests(server, body, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_api_key_is_required_and_checked(server):
    assert post(server, "/v1/chat/completions", OK, key=None).status_code == 401
    wrong = post(server, "/v1/chat/completions", OK, key="wrong")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    bad_client = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_client.models.list()
    health = httpx.get(server.url + "/health")  # liveness probes need no key
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_unknown_route_and_method_are_openai_shaped(server):
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and "error" in r.json()


def test_oversized_body_is_413(server):
    r = post(server, "/v1/chat/completions", b"x" * (5 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_client_disconnecting_mid_stream_cancels_its_generation(server, client):
    import time

    body = {"model": "tiny", "messages": Q, "max_tokens": 400, "ignore_eos": True, "stream": True}
    backend = server.backend
    batches: list[int] = []
    ended = threading.Event()
    hook = backend.on_batch

    def watch(rows, tokens, seconds):
        batches.append(tokens)
        ended.set()
        hook(rows, tokens, seconds)

    backend.on_batch = watch
    metrics = server.app.state.metrics.registry
    abandoned = metrics.get_sample_value("tunesmith_abandoned_streams_total")
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        with httpx.stream(
            "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():  # the role chunk comes first; wait for generated text
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
        # Hung up while generating: the batch ends long before its 400 tokens.
        assert ended.wait(60), "the abandoned generation never ended"
    finally:
        backend.on_batch = hook
    assert batches[0] < 200, batches
    deadline = time.monotonic() + 10
    while metrics.get_sample_value("tunesmith_abandoned_streams_total") != abandoned + 1:
        assert time.monotonic() < deadline, "the abandoned stream was not counted"
        time.sleep(0.05)
    # The server keeps serving.
    after = client.chat.completions.create(model="tiny", messages=Q, max_tokens=3)
    assert after.usage.completion_tokens <= 3
    assert backend.queue_depth() == 0


def test_ignore_eos_generates_exactly_max_tokens(client):
    r = client.chat.completions.create(
        model="tiny", messages=Q, max_tokens=20, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"


def test_fifty_concurrent_requests_are_all_served(server):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            body = {"model": "tiny", "max_tokens": 3, "temperature": 0}
            reqs = [
                c.post(
                    "/v1/chat/completions",
                    json={
                        **body,
                        "messages": [{"role": "user", "content": f"第{i}问"}],
                        "model": ["tiny", "alt"][i % 2],
                    },
                    headers={"Authorization": f"Bearer {KEY}"},
                )
                for i in range(50)
            ]
            return await asyncio.gather(*reqs)

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 50
    assert all(r.json()["usage"]["completion_tokens"] <= 3 for r in responses)
    assert httpx.get(server.url + "/health").json()["queue_depth"] == 0


def test_metrics_in_prometheus_format(server, client):
    client.chat.completions.create(model="tiny", messages=Q, max_tokens=2)
    post(server, "/v1/chat/completions", {**OK, "temperature": 9})
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in (
        'tunesmith_requests_total{endpoint="/v1/chat/completions",status="200"}',
        'tunesmith_requests_total{endpoint="/v1/chat/completions",status="400"}',
        "tunesmith_request_latency_seconds_bucket",
        'tunesmith_prompt_tokens_total{model="tiny"}',
        'tunesmith_generated_tokens_total{model="tiny"}',
        "tunesmith_generated_tokens_per_second",
        "tunesmith_queue_depth",
        "tunesmith_batch_size_bucket",
        "tunesmith_time_to_first_token_seconds",
    ):
        assert name in text, name


def test_full_queue_is_429(server):
    from tunesmith.serving.backends import QueueFull
    from tunesmith.serving.transformers_backend import TransformersBackend

    class Parked(TransformersBackend):
        def start(self):  # no worker: requests stay queued
            pass

    parked = Parked(server.backend.models, server.backend.model, max_queue=1)
    with ServerThread(create_app(parked)) as srv:
        first = threading.Thread(target=post, args=(srv, "/v1/chat/completions", OK), daemon=True)
        first.start()
        while parked.queue_depth() < 1:
            first.join(0.01)
        r = post(srv, "/v1/chat/completions", OK)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert r.json()["error"]["type"] == "rate_limit_error"
        parked.close()  # the parked request ends with an error, not a hang
        first.join(10)
    with pytest.raises(QueueFull):
        Parked(server.backend.models, server.backend.model, max_queue=0).submit(
            parked_request(server), lambda ev: None
        )


def parked_request(server):
    from tunesmith.serving.backends import GenRequest

    m = server.backend.models["tiny"]
    return GenRequest(m, m.chat_prompt(Q), Sampling(max_new_tokens=2))


def test_a_full_weights_run_is_served_with_its_base_model(tiny_qwen, tmp_path):
    """lora.method=full saves a whole model: `base` swaps the base weights in, batch by batch."""
    from conftest import EXAMPLE_DATA
    from tunesmith.config import load_config
    from tunesmith.runtime.chatbot import load_chatbot
    from tunesmith.serving.backends import GenRequest
    from tunesmith.training import run_train

    cfg = load_config(None, [
        f"model.source={tiny_qwen}", f"data.path={EXAMPLE_DATA}", "data.limit=8", "lora.method=full",
        f"train.output_dir={tmp_path / 'full'}", "train.max_steps=2", "train.learning_rate=1e-3",
        "train.dtype=float32", "data.val_fraction=0",
    ])  # fmt: skip
    run = run_train(cfg)
    backend = build_backend({"full": run}, device="cpu")
    assert set(backend.models) == {"full", "base"} and backend.models["base"].is_base
    greedy = Sampling(temperature=0, max_new_tokens=6)

    async def ask(name):
        m = backend.models[name]
        events = [ev async for ev in backend.generate(GenRequest(m, m.chat_prompt(Q), greedy))]
        return "".join(ev.text for ev in events).strip()

    async def both():
        return await asyncio.gather(ask("full"), ask("base"))

    try:
        tuned, base = asyncio.run(both())
    finally:
        backend.close()
    bot = load_chatbot(run, device="cpu")
    # (a dangling half character at the very end is not sent; generate_batch keeps it)
    assert tuned == bot.generate_batch([Q], greedy)[0].text.rstrip("\ufffd")
    assert base == bot.generate_batch([Q], greedy, base=True)[0].text.rstrip("\ufffd")
    assert tuned != base


def test_the_batch_refills_when_its_clients_come_back_at_different_moments(tiny_run):
    """Eight clients whose answers end at different moments and who take a while to send the next
    request: the batches stay full instead of splitting into part-batches that alternate."""
    import time

    from tunesmith.serving.backends import GenRequest

    backend = build_backend({"tiny": tiny_run}, device="cpu", max_batch=8)
    sizes = []
    backend.on_batch = lambda rows, tokens, seconds: sizes.append(rows)
    m = backend.models["tiny"]
    prompt = m.chat_prompt([{"role": "user", "content": "你好"}])

    def client(i):
        for _ in range(4):
            done = threading.Event()
            sampling = Sampling(temperature=0, max_new_tokens=2 + 3 * i)  # each ends at its own time
            req = GenRequest(m, prompt, sampling, ignore_eos=True)
            backend.submit(req, lambda ev, done=done: ev.finish and done.set())
            assert done.wait(120)
            time.sleep(0.06)  # a busy client: longer than the 20 ms batch wait

    with one_thread():
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        backend.close()
    assert sum(sizes) == 32
    assert sum(sizes) / len(sizes) >= 7, sizes
