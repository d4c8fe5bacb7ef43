"""Legacy `POST /v1/completions` bodies (openai-python 1.109.1 `completion_create_params`)."""

from __future__ import annotations

from typing import Any

from meshgate import tokens
from meshgate.structs import from_dict
from meshgate.v1 import inference_pb2
from services.validation import checks as c
from services.validation.chat import stop_sequences, streaming

MODELLED = frozenset(
    {
        "model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "user", "stream",
        "stream_options", "echo", "suffix", "presence_penalty", "frequency_penalty", "n", "logprobs",
    }
)  # fmt: skip
_PROMPT_TYPE = (
    "one of a string, array of strings, array of integers, or array of arrays of integers"
)


def _token_ids(value: list[Any], path: str) -> str:
    ids = [c.integer(t, c.join(path, i), minimum=0) for i, t in enumerate(value)]
    try:
        return tokens.encoding().decode(ids)
    except Exception:  # the tokenizer rejects ids outside its vocabulary
        raise c.Invalid(
            f"Invalid '{path}': contains token ids outside the vocabulary.", path
        ) from None


def _number(value: object) -> bool:
    """A token id candidate: JSON Schema counts `602.0` as an integer, and so do we
    (c.integer then refuses one that is not whole)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def prompts(raw: object, path: str) -> list[str]:
    """A prompt in any of its four OpenAI shapes, as a list of strings."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        c.wrong_type(path, _PROMPT_TYPE, raw)
    items = c.array(raw, path, min_length=1)
    if all(isinstance(x, str) for x in items):
        return list(items)
    if all(_number(x) for x in items):
        return [_token_ids(items, path)]
    if all(isinstance(x, list) for x in items):
        return [
            _token_ids(c.array(x, c.join(path, i), min_length=1), c.join(path, i))
            for i, x in enumerate(items)
        ]
    c.wrong_type(path, _PROMPT_TYPE, raw)


def validate_completion(body: dict[str, Any]) -> inference_pb2.CompletionRequest:
    out = inference_pb2.CompletionRequest(
        model=c.string(c.require(body, "model"), "model", non_empty=True)
    )
    out.prompt.extend(prompts(c.require(body, "prompt"), "prompt"))
    get = body.get
    if get("max_tokens") is not None:
        out.max_tokens = c.integer(body["max_tokens"], "max_tokens", minimum=0)
    c.sampling(body, out)
    if get("stop") is not None:
        out.stop.extend(stop_sequences(body["stop"]))
    if get("seed") is not None:
        out.seed = c.integer(body["seed"], "seed")
    if get("user") is not None:
        out.user = c.string(body["user"], "user")
    if get("echo") is not None:
        out.echo = c.boolean(body["echo"], "echo")
    if get("suffix") is not None:
        out.suffix = c.string(body["suffix"], "suffix")
    if get("n") is not None and c.integer(body["n"], "n", minimum=1) > 1:
        c.unsupported(
            "n", "Invalid 'n': meshgate returns a single choice per prompt; n > 1 is not supported."
        )
    if get("logprobs") is not None:
        c.integer(body["logprobs"], "logprobs", minimum=0, maximum=5)
        c.unsupported("logprobs", "Unsupported parameter: 'logprobs' is not supported.")
    streaming(body, out)
    extra = {k: v for k, v in body.items() if k not in MODELLED}
    if extra:
        out.extra.CopyFrom(from_dict(extra))
    return out
