"""OpenAI-compatible serving of run directories: protocol, backends (transformers, vLLM), app.

Heavy dependencies (FastAPI, uvicorn, prometheus_client, vllm) are imported by the modules that
need them, so ``import tunesmith.serving`` stays cheap.
"""
