"""Fuzzing the edge over real HTTP: whatever a client sends, the answer is OpenAI's envelope.

Every test runs against real meshgate processes (the session `mesh`, and one
mesh of our own with a 1 KiB body limit) over loopback, with httpx or a raw
socket. For every response: the status is below 500 (the mesh is healthy, so a
5xx can only be meshgate's fault), `x-request-id` is present, no stack trace
leaks, and a non-2xx body is the envelope with its four keys, as
application/json.

Hypothesis runs derandomized with bounded example counts, so a CI run is
reproducible and the file stays well under a minute on 2 cores. The general
strategies keep integers within 32 bits, strings short and nesting shallow: what
lies beyond those bounds (deep nesting, huge integers and strings, long echoed
values, malformed HTTP, clients that give up) has its own tests below.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import string
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"
MINI = "meshgate/reference-mini"
EMBED = "bge-m3"
USER = [{"role": "user", "content": "hi"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MINI, "messages": USER, "max_tokens": 2},
    "/v1/completions": {"model": MINI, "prompt": "hi", "max_tokens": 2},
    "/v1/embeddings": {"model": EMBED, "input": "hi"},
}
POSTS = list(VALID)
CHAT = "/v1/chat/completions"
ENVELOPE_KEYS = {"message", "type", "param", "code"}
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SMALL_LIMIT = 1024

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)


# ---------------------------------------------------------------- checks ----


def describe(response: httpx.Response) -> str:
    request = response.request
    return (
        f"{request.method} {request.url.raw_path.decode(errors='replace')[:200]} -> "
        f"{response.status_code} {dict(response.headers)} {response.content[:500]!r}"
    )


def check(response: httpx.Response, *, head: bool = False) -> dict[str, Any] | None:
    """The invariants of every answer; returns the envelope's inner error, if any."""
    where = describe(response)
    assert response.status_code < 500, where
    assert response.headers.get("x-request-id"), where
    text = response.content.decode("utf-8", errors="replace")
    assert "Traceback" not in text and 'File "' not in text, where
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type") == "application/json", where
    if head:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, where
    error: dict[str, Any] = body["error"]
    assert ENVELOPE_KEYS <= set(error), where
    assert isinstance(error["message"], str) and error["message"], where
    assert isinstance(error["type"], str) and error["type"], where
    return error


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def padded(path: str, size: int) -> bytes:
    """A valid body for `path`, exactly `size` bytes long (a pass-through field pads it)."""
    base = dumps({**VALID[path], "pad": ""})
    assert size >= len(base)
    return dumps({**VALID[path], "pad": "x" * (size - len(base))})


def nested(depth: int, shape: str) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'[{"a":' * (depth // 2) + b"1" + b"}]" * (depth // 2)


# ------------------------------------------------------------- raw socket ----


def parse_raw(raw: bytes, method: str = "POST", path: str = "/") -> httpx.Response:
    """One HTTP/1.1 response read off a socket, as an httpx.Response for `check`."""
    assert raw.startswith(b"HTTP/1.1 "), f"no HTTP response, got {raw[:200]!r}"
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(":", 1)) for line in lines if ":" in line]
    pairs = [(name.strip(), value.strip()) for name, value in headers]
    length = next((int(v) for n, v in pairs if n.lower() == "content-length"), len(rest))
    return httpx.Response(
        int(status_line.split()[1]),
        headers=pairs,
        content=rest[:length],
        request=httpx.Request(method, f"http://edge{path}"),
    )


def read_response(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Bytes until the headers and a content-length's worth of body arrived (or EOF)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if match and len(rest) >= int(match.group(1)):
                return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def connect(origin: str) -> socket.socket:
    url = urlsplit(origin)
    assert url.hostname in ("127.0.0.1", "localhost")  # loopback only
    return socket.create_connection((url.hostname, url.port or 80), timeout=30)


def request_head(path: str, key: str, length: int | None, extra: str = "") -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


# --------------------------------------------------------------- fixtures ----


@pytest.fixture(scope="module")
def api(mesh: RunningMesh) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.origin, headers=headers, timeout=30) as session:
        yield session


@pytest.fixture(scope="module")
def small(start_mesh: Any) -> Iterator[RunningMesh]:
    """A mesh of our own whose edge takes bodies of at most 1 KiB."""
    running: RunningMesh = start_mesh(edge={"max_body_bytes": SMALL_LIMIT})
    yield running
    assert running.stop() == 0, running.output()


@pytest.fixture(scope="module")
def small_api(small: RunningMesh) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {small.api_key}"}
    with httpx.Client(base_url=small.origin, headers=headers, timeout=30) as session:
        yield session


# ------------------------------------------------------------- strategies ----


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**31), max_value=2**31 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
).filter(lambda v: depth(v) <= 20)
FIELDS = st.sampled_from(
    [
        "model", "messages", "prompt", "input", "temperature", "top_p", "stop", "seed", "user",
        "stream", "stream_options", "tools", "tool_choice", "response_format", "n", "logprobs",
        "top_logprobs", "presence_penalty", "frequency_penalty", "echo", "suffix",
        "encoding_format", "dimensions", "top_k", "metadata",
    ]
)  # fmt: skip


def message_strategy() -> st.SearchStrategy[Any]:
    role = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "x"])
    part = st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", "?"])},
        optional={
            "text": JSON,
            "image_url": st.fixed_dictionaries({"url": st.text(max_size=30)}) | JSON,
            "input_audio": JSON,
            "refusal": JSON,
            "file": JSON,
        },
    )
    content = st.text(max_size=40) | st.lists(part, max_size=3) | JSON
    return st.fixed_dictionaries(
        {"role": role},
        optional={"content": content, "name": JSON, "tool_calls": JSON, "tool_call_id": JSON},
    )


# ---------------------------------------------------------- random bodies ----


@settings(FUZZ, max_examples=60)
@given(path=st.sampled_from(POSTS), body=JSON)
def test_random_json_bodies(api: httpx.Client, path: str, body: Any) -> None:
    response = api.post(path, content=dumps(body))
    error = check(response)
    if not isinstance(body, dict):
        assert response.status_code == 400 and error is not None
        assert error["param"] is None, describe(response)


@settings(FUZZ, max_examples=80)
@given(path=st.sampled_from(POSTS), changes=st.dictionaries(FIELDS, JSON, min_size=1, max_size=4))
def test_random_values_in_known_fields(
    api: httpx.Client, path: str, changes: dict[str, Any]
) -> None:
    """A valid request with a few fields replaced by random JSON."""
    check(api.post(path, content=dumps({**VALID[path], **changes})))


@settings(FUZZ, max_examples=40)
@given(messages=st.lists(message_strategy(), min_size=1, max_size=4))
def test_random_messages(api: httpx.Client, messages: list[Any]) -> None:
    body = {"model": PRO, "messages": messages, "max_tokens": 2}
    check(api.post(CHAT, content=dumps(body)))


# ---------------------------------------------------------------- nesting ----


@pytest.mark.parametrize("shape", ["array", "object", "mixed"])
@pytest.mark.parametrize("path", POSTS)
def test_deep_nesting_is_a_400(api: httpx.Client, path: str, shape: str) -> None:
    """10,000 levels: orjson stops at 1024 and the validator answers 400, at the top or inside."""
    deep = nested(10_000, shape)
    for body in (
        deep,
        b'{"model":' + deep + b"}",
        dumps(VALID[path])[:-1] + b',"x":' + deep + b"}",
    ):
        response = api.post(path, content=body)
        error = check(response)
        assert response.status_code == 400 and error is not None, describe(response)
        assert error["type"] == "invalid_request_error" and error["param"] is None


@pytest.mark.parametrize("levels", [1, 10, 40])
@pytest.mark.parametrize("path", POSTS)
def test_moderate_nesting_passes_through(api: httpx.Client, path: str, levels: int) -> None:
    body = dumps(VALID[path])[:-1] + b',"metadata":' + nested(levels, "array") + b"}"
    response = api.post(path, content=body)
    check(response)
    assert response.status_code == 200, describe(response)


@pytest.mark.parametrize("path", POSTS)
def test_deep_nesting_in_a_passthrough_field(api: httpx.Client, path: str) -> None:
    for levels in (49, 50, 100, 500, 1000):
        body = dumps(VALID[path])[:-1] + b',"metadata":' + nested(levels, "array") + b"}"
        check(api.post(path, content=body))


# ---------------------------------------------------------------- numbers ----


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/embeddings", "dimensions", 2**31),
        (CHAT, "seed", 2**63),
        (CHAT, "max_tokens", 2**63),
        ("/v1/completions", "seed", 2**64),
        ("/v1/completions", "max_tokens", 2**63),
    ],
)
def test_out_of_range_integers(api: httpx.Client, path: str, field: str, value: int) -> None:
    response = api.post(path, content=dumps({**VALID[path], field: value}))
    error = check(response)
    assert response.status_code == 400 and error is not None and error["param"] == field


# ---------------------------------------------------------- huge strings ----


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (CHAT, {**VALID[CHAT], "metadata": "x" * 6_000_000}, 200),
        (CHAT, {**VALID[CHAT], "user": "é" * 2_500_000}, 200),
        (CHAT, {**VALID[CHAT], "stop": "s" * 5_000_000}, 200),
        (
            CHAT,
            {"model": MINI, "messages": [{"role": "user", "content": "word " * 20_000}] * 50},
            400,
        ),
        ("/v1/completions", {"model": MINI, "prompt": ["word " * 20_000] * 50}, 400),
        ("/v1/embeddings", {"model": EMBED, "input": ["word " * 20_000] * 50}, 400),
    ],
    ids=["passthrough", "user", "stop", "messages", "prompts", "inputs"],
)
def test_huge_strings_under_the_limit(
    api: httpx.Client, mesh: RunningMesh, path: str, body: dict[str, Any], status: int
) -> None:
    content = dumps(body)
    assert 4_000_000 < len(content) <= mesh.config.edge.max_body_bytes
    response = api.post(path, content=content)
    error = check(response)
    assert response.status_code == status, describe(response)
    if error is not None:
        assert error["code"] == "context_length_exceeded", describe(response)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"model": PRO, "messages": [{"role": "user", "content": "a" * 1_000_000}]}),
        (CHAT, {"model": PRO, "messages": [{"role": "user", "content": " a" * 200_001}]}),
        ("/v1/completions", {"model": MINI, "prompt": "a" * 1_000_000}),
        ("/v1/embeddings", {"model": EMBED, "input": "a" * 1_000_000}),
    ],
    ids=["chars", "tokens", "prompt", "input"],
)
def test_one_huge_string_is_a_context_error(
    api: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    response = api.post(path, content=dumps(body))
    error = check(response)
    assert error is not None and error["code"] == "context_length_exceeded", describe(response)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", CHAT, {**VALID[CHAT], "model": "m" * 10_000}, 404),
        ("GET", "/v1/models/" + "m" * 20_000, None, 404),
        (
            "POST",
            CHAT,
            {
                "model": PRO,
                "messages": USER,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g" * 100_000}},
            },
            400,
        ),
    ],
    ids=["model", "model-path", "tool-choice"],
)
def test_long_echoed_values(
    api: httpx.Client, method: str, path: str, body: Any, status: int
) -> None:
    response = api.request(method, path, content=None if body is None else dumps(body))
    check(response)
    assert response.status_code == status, describe(response)


# ----------------------------------------------------- bytes and content types ----


@settings(FUZZ, max_examples=60)
@given(path=st.sampled_from(POSTS), raw=st.binary(max_size=300))
def test_random_bytes(api: httpx.Client, path: str, raw: bytes) -> None:
    response = api.post(path, content=raw)
    check(response)
    assert response.status_code == 400, describe(response)


INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",  # a lead byte without its continuation
    b"\xa0\xa1",  # continuation bytes alone
    b"\xe2\x82",  # a truncated 3-byte sequence
    b"\xc0\xaf",  # an overlong '/'
    b"\xed\xa0\x80",  # a UTF-16 surrogate encoded as UTF-8
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # a 5-byte sequence
]


@settings(FUZZ, max_examples=40)
@given(
    path=st.sampled_from(POSTS),
    bad=st.sampled_from(INVALID_UTF8),
    before=st.text(max_size=10),
    where=st.sampled_from(["value", "key", "bare"]),
)
def test_invalid_utf8(api: httpx.Client, path: str, bad: bytes, before: str, where: str) -> None:
    prefix = json.dumps(before)[1:-1].encode()
    inner = dumps(VALID[path])[:-1]
    if where == "value":
        body = inner + b',"user":"' + prefix + bad + b'"}'
    elif where == "key":
        body = inner + b',"' + prefix + bad + b'":1}'
    else:
        body = inner + b"," + bad + b"}"
    response = api.post(path, content=body)
    error = check(response)
    assert response.status_code == 400 and error is not None, describe(response)
    assert error["param"] is None


CONTENT_TYPES = [
    None,
    "",
    "text/plain",
    "text/html; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/xml",
    "application/octet-stream",
    "image/png",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "*/*",
    "garbage",
]
BODIES = [
    "valid",
    b"model=meshgate%2Freference-mini&prompt=hi",
    b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nbge-m3\r\n--xyz--\r\n',
    b"<request><model>bge-m3</model></request>",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    '{"model": "bge-m3", "input": "hi"}'.encode("utf-16"),
    b"",
]


@settings(FUZZ, max_examples=50)
@given(
    path=st.sampled_from(POSTS),
    content_type=st.sampled_from(CONTENT_TYPES)
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    body=st.sampled_from(BODIES),
    encoding=st.sampled_from([None, "gzip", "br", "identity"]),
)
def test_wrong_content_types(
    api: httpx.Client, path: str, content_type: str | None, body: Any, encoding: str | None
) -> None:
    """The edge reads the body as JSON whatever the content type says; never a 5xx."""
    content = dumps(VALID[path]) if body == "valid" else body
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    response = api.post(path, content=content, headers=headers)
    check(response)
    if body != "valid":
        assert response.status_code == 400, describe(response)


# -------------------------------------------------------------- body limit ----


def chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_default_limit(api: httpx.Client, mesh: RunningMesh, chunked: bool) -> None:
    limit = mesh.config.edge.max_body_bytes
    body = b"x" * (limit + 1)
    content: Any = chunks(body, 1 << 20) if chunked else body
    response = api.post(CHAT, content=content)
    error = check(response)
    assert response.status_code == 413 and error is not None, describe(response)
    assert error["type"] == "invalid_request_error"
    assert str(limit) in error["message"]


@settings(FUZZ, max_examples=40)
@given(
    path=st.sampled_from(POSTS),
    size=st.integers(min_value=200, max_value=3 * SMALL_LIMIT),
    chunked=st.booleans(),
    piece=st.integers(min_value=1, max_value=2048),
)
def test_body_limit_boundary(
    small_api: httpx.Client, path: str, size: int, chunked: bool, piece: int
) -> None:
    """Exactly the limit is served; one byte more is a 413, with or without a content-length."""
    body = padded(path, size)
    content: Any = chunks(body, piece) if chunked else body
    response = small_api.post(path, content=content)
    error = check(response)
    if size > SMALL_LIMIT:
        assert response.status_code == 413 and error is not None, describe(response)
        assert f"the limit is {SMALL_LIMIT} bytes" in error["message"]
    else:
        assert response.status_code == 200, describe(response)


@settings(FUZZ, max_examples=15)
@given(size=st.integers(min_value=SMALL_LIMIT + 1, max_value=4_000_000), chunked=st.booleans())
def test_oversized_body_small_limit(small_api: httpx.Client, size: int, chunked: bool) -> None:
    body = b"{" + b" " * (size - 1)
    content: Any = chunks(body, 65536) if chunked else body
    response = small_api.post(CHAT, content=content)
    error = check(response)
    assert response.status_code == 413 and error is not None, describe(response)


def test_declared_length_over_the_limit_is_refused_before_the_body(small: RunningMesh) -> None:
    """A content-length above the limit is answered at once, without waiting for the body."""
    with connect(small.origin) as sock:
        sock.sendall(request_head(CHAT, small.api_key, 10 * SMALL_LIMIT))
        response = parse_raw(read_response(sock, timeout=10), path=CHAT)
    check(response)
    assert response.status_code == 413, describe(response)


# ---------------------------------------------------------- slow clients ----


def trickle(origin: str, key: str, body: bytes, pieces: int, pause: float) -> httpx.Response:
    """A request whose body arrives in `pieces`, `pause` seconds apart."""
    with connect(origin) as sock:
        sock.sendall(request_head(CHAT, key, len(body)))
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            time.sleep(pause)
            sock.sendall(body[start : start + step])
        return parse_raw(read_response(sock), path=CHAT)


def test_slow_client_is_answered(mesh: RunningMesh) -> None:
    body = dumps(VALID[CHAT])
    response = trickle(mesh.origin, mesh.api_key, body, pieces=12, pause=0.08)
    check(response)
    assert response.status_code == 200, describe(response)
    assert response.json()["object"] == "chat.completion"


def test_slow_headers_are_answered(mesh: RunningMesh) -> None:
    body = dumps(VALID[CHAT])
    data = request_head(CHAT, mesh.api_key, len(body)) + body
    with connect(mesh.origin) as sock:
        for start in range(0, len(data), 16):
            sock.sendall(data[start : start + 16])
            time.sleep(0.005)
        response = parse_raw(read_response(sock), path=CHAT)
    check(response)
    assert response.status_code == 200, describe(response)


def test_stalled_clients_do_not_block_others(mesh: RunningMesh, api: httpx.Client) -> None:
    """Twenty clients stall mid-headers or mid-body; everyone else is still served promptly."""
    stalled: list[socket.socket] = []
    body = dumps(VALID[CHAT])
    try:
        for i in range(20):
            sock = connect(mesh.origin)
            stalled.append(sock)
            if i % 2:
                sock.sendall(request_head(CHAT, mesh.api_key, len(body)) + body[:10])
            else:
                sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le".encode())
        time.sleep(0.2)

        def one(i: int) -> float:
            started = time.perf_counter()
            path = POSTS[i % len(POSTS)]
            response = api.post(path, content=dumps(VALID[path]))
            check(response)
            assert response.status_code == 200, describe(response)
            return time.perf_counter() - started

        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            slow = pool.submit(trickle, mesh.origin, mesh.api_key, body, 8, 0.1)
            latencies = list(pool.map(one, range(60)))
            trickled = slow.result(timeout=30)
        assert max(latencies) < 5.0, latencies
        check(trickled)
        assert trickled.status_code == 200, describe(trickled)
    finally:
        for sock in stalled:
            sock.close()
    check(api.get("/v1/models"))


def test_client_that_gives_up_is_not_an_error(mesh: RunningMesh, api: httpx.Client) -> None:
    rid = f"fuzz-gone-{uuid.uuid4().hex}"
    with connect(mesh.origin) as sock:
        sock.sendall(request_head(CHAT, mesh.api_key, 1000, f"X-Request-Id: {rid}\r\n"))
        sock.sendall(b'{"model":')
        time.sleep(0.2)
    check(api.get("/v1/models"))  # the edge is still fine
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and rid not in mesh.stderr():
        time.sleep(0.1)
    lines = [line for line in mesh.stderr().splitlines() if rid in line]
    assert not any('"level":"error"' in line for line in lines), lines


# ---------------------------------------------------------------- headers ----

HEADER_TEXT = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


@settings(FUZZ, max_examples=60)
@given(
    authorization=st.text(HEADER_TEXT, max_size=300).map(lambda s: s.strip()),
    request_id=st.none() | st.text(HEADER_TEXT, max_size=200).map(lambda s: s.strip()),
    path=st.sampled_from([*POSTS, "/v1/models", "/v1/models/" + MINI]),
)
def test_random_authorization_and_request_id(
    mesh: RunningMesh, authorization: str, request_id: str | None, path: str
) -> None:
    assume(authorization != f"Bearer {mesh.api_key}")
    headers = {"Authorization": authorization.encode("latin-1")}
    if request_id is not None:
        headers["X-Request-Id"] = request_id.encode("latin-1")
    method = "POST" if path in POSTS else "GET"
    content = dumps(VALID[path]) if path in POSTS else None
    response = httpx.request(
        method, mesh.origin + path, headers=headers, content=content, timeout=30
    )
    error = check(response)
    assert response.status_code == 401 and error is not None, describe(response)
    assert error["type"] == "authentication_error"
    returned = response.headers["x-request-id"]
    if request_id is not None and CLIENT_REQUEST_ID.match(request_id):
        assert returned == request_id
    else:
        assert returned.startswith("req_")


@pytest.mark.parametrize(
    ("size", "status"),
    [(8_000, 401), (30_000, 401), (33_000, 431), (1_000_000, 431)],
)
def test_huge_authorization_header(mesh: RunningMesh, size: int, status: int) -> None:
    token = "sk-" + "x" * size
    for path in ("/v1/models", CHAT):
        response = httpx.request(
            "GET" if path == "/v1/models" else "POST",
            mesh.origin + path,
            headers={"Authorization": f"Bearer {token}"},
            content=None if path == "/v1/models" else dumps(VALID[CHAT]),
            timeout=30,
        )
        check(response)
        assert response.status_code == status, describe(response)


@settings(FUZZ, max_examples=30)
@given(
    headers=st.dictionaries(
        st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=30).filter(
            lambda name: (
                name.lower()
                not in {
                    "authorization",
                    "content-length",
                    "transfer-encoding",
                    "host",
                    "connection",
                }
            )
        ),
        st.text(HEADER_TEXT, max_size=100).map(lambda s: s.strip()),
        max_size=8,
    )
)
def test_random_extra_headers(api: httpx.Client, headers: dict[str, str]) -> None:
    sent = {name: value.encode("latin-1") for name, value in headers.items()}
    response = api.post(CHAT, content=dumps(VALID[CHAT]), headers=sent)
    check(response)


# ---------------------------------------------------------- paths and methods ----

PATH_TEXT = string.ascii_letters + string.digits + "-._~/!$&'()*+,;=:@"
KNOWN_PATHS = [
    *POSTS,
    "/v1/models",
    "/v1/models/" + MINI,
    "/v1/models/meshgate%2Freference-pro",
    "/v1/fine-tuning/jobs",
    "/v1/assistants",
    "/v1/files/abc",
    "/v1/batches",
    "/v1",
    "/",
    "/openapi.json",
]
PATHS = (
    st.sampled_from(KNOWN_PATHS)
    | st.text(PATH_TEXT, max_size=60).map(lambda s: "/" + s)
    | st.tuples(
        st.sampled_from(["/v1/", "/v1/models/", "/"]),
        st.binary(min_size=1, max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    ).map("".join)
)


@settings(FUZZ, max_examples=80)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=PATHS,
    query=st.none() | st.text(PATH_TEXT + "?", max_size=30),
    origin=st.none() | st.sampled_from(["https://evil.example", "null"]),
)
def test_random_paths_and_methods(
    api: httpx.Client, method: str, path: str, query: str | None, origin: str | None
) -> None:
    headers = {}
    if origin is not None:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    target = path if query is None else f"{path}?{query}"
    # The path goes on the wire as is: never re-parsed, so "//host/..." cannot leave loopback.
    url = api.base_url.copy_with(raw_path=target.encode("ascii"))
    assert url.host == "127.0.0.1"
    content = dumps(VALID[path]) if path in VALID and method == "POST" else None
    response = api.send(api.build_request(method, url, headers=headers, content=content))
    if path in ("/healthz", "/readyz"):  # see test_every_route_carries_a_request_id
        return
    check(response, head=method == "HEAD")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_every_route_carries_a_request_id(api: httpx.Client, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 200
    assert response.headers.get("x-request-id"), describe(response)


MALFORMED = [
    b"FOO /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",  # a method llhttp does not know
    b"GET /v1/mo dels HTTP/1.1\r\nHost: x\r\n\r\n",  # a space in the target
    b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",  # raw non-ASCII in the target
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",  # a space in a name
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # both framings (smuggling)
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n",  # a chunk size that is not hex
]


def test_malformed_http_is_refused_without_a_traceback(mesh: RunningMesh) -> None:
    """What uvicorn answers itself: a 400, the connection closed, and no stack trace."""
    for raw in MALFORMED:
        with connect(mesh.origin) as sock:
            sock.sendall(raw)
            answer = read_response(sock, timeout=10)
        assert answer.startswith(b"HTTP/1.1 400 "), (raw, answer)
        assert b"Traceback" not in answer and b'File "' not in answer, (raw, answer)
    check(httpx.get(mesh.origin + "/v1/models", headers={"Authorization": "Bearer x"}))


@pytest.mark.parametrize("raw", MALFORMED, ids=[f"malformed{i}" for i in range(len(MALFORMED))])
def test_malformed_http_gets_the_envelope(mesh: RunningMesh, raw: bytes) -> None:
    with connect(mesh.origin) as sock:
        sock.sendall(raw)
        response = parse_raw(read_response(sock, timeout=10))
    check(response)
