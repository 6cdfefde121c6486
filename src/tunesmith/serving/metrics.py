"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..deps import require

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


def _prometheus() -> Any:
    return require("prometheus_client", "serve", "serving", "prometheus-client")


class ServerMetrics:
    """Requests by status, latency, time to first token, tokens, throughput, queue depth, batch sizes."""

    def __init__(self, queue_depth: Callable[[], int]):
        pc = _prometheus()
        pc.disable_created_metrics()  # the *_created series only add noise to a single server
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.requests = pc.Counter(
            "tunesmith_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = pc.Histogram(
            "tunesmith_request_latency_seconds",
            "time from request to last byte, generation endpoints",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = pc.Histogram(
            "tunesmith_time_to_first_token_seconds",
            "time from request to the first streamed text",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = pc.Counter("tunesmith_prompt_tokens", "prompt tokens", ["model"], registry=r)
        self.generated_tokens = pc.Counter(
            "tunesmith_generated_tokens", "generated tokens", ["model"], registry=r
        )
        self.finished = pc.Counter(
            "tunesmith_answers", "answers by finish reason", ["model", "finish_reason"], registry=r
        )
        self.abandoned = pc.Counter(
            "tunesmith_abandoned_streams", "streamed answers whose client left before the end", registry=r
        )
        self.tokens_per_second = pc.Gauge(
            "tunesmith_generated_tokens_per_second",
            "generated tokens per second of the last batch",
            registry=r,
        )
        self.batch_size = pc.Histogram(
            "tunesmith_batch_size",
            "requests per generation batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.queue = pc.Gauge("tunesmith_queue_depth", "requests waiting for a batch", registry=r)
        self.queue.set_function(queue_depth)

    def on_batch(self, rows: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        if seconds > 0:
            self.tokens_per_second.set(tokens / seconds)

    def on_answer(self, model: str, prompt_tokens: int, completion_tokens: int, finish: str) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generated_tokens.labels(model).inc(completion_tokens)
        self.finished.labels(model, finish).inc()

    def render(self) -> tuple[bytes, str]:
        pc = _prometheus()
        return pc.generate_latest(self.registry), pc.CONTENT_TYPE_LATEST
