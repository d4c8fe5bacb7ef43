"""OpenAI-compatible HTTP engines: the adapter, and the load signals each engine kind exposes.

- `engine.py`: the adapter (vLLM, SGLang, llama.cpp's server, Ollama, TGI, hosted APIs).
- `probe.py`: reads an engine's `/metrics` (and llama.cpp's `/slots`) for the balancer.
- `exposition.py`: the Prometheus text format, read with prometheus_client's parser.
- `vllm.py`, `sglang.py`, `llama_cpp.py`: each engine's metric names and how they make a load.
"""

from services.router.adapters.openai_http.engine import OpenAIHttpEngine
from services.router.adapters.openai_http.probe import MetricsProbe

__all__ = ["MetricsProbe", "OpenAIHttpEngine"]
