"""The config schema: defaults, MESHGATE_* overrides and errors that name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from meshgate.config import SAMPLE_CONFIG, ConfigError, load_config


def _write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sample() -> dict[str, object]:
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    assert isinstance(raw, dict)
    return raw


def test_sample_config_matches_the_brief() -> None:
    config = load_config(SAMPLE_CONFIG, environ={})
    assert (config.edge.host, config.edge.port) == ("127.0.0.1", 8080)
    chat = [m for m in config.models if m.category != "embeddings"]
    assert any(
        set(m.capabilities) == {"tool_use", "vision", "json_schema", "prompt_caching"} for m in chat
    )
    assert any(not m.capabilities for m in chat)
    embeddings = [m for m in config.models if m.category == "embeddings"]
    assert [m.dimensions for m in embeddings] == [1024]
    assert config.keys, "meshgate up needs a key to print"


def test_env_overrides_nested_keys() -> None:
    env = {
        "MESHGATE_EDGE__PORT": "9001",
        "MESHGATE_SERVICES__ENGINE__TOKEN_DELAY_MS": "2.5",
        "REDIS_URL": "redis://example:6379/0",
    }
    config = load_config(SAMPLE_CONFIG, environ=env)
    assert config.edge.port == 9001
    assert config.services.engine.token_delay_ms == 2.5
    assert config.redis.url == "redis://example:6379/0"


def test_meshgate_redis_url_wins_over_redis_url() -> None:
    env = {"REDIS_URL": "redis://a:1/0", "MESHGATE_REDIS__URL": "redis://b:2/0"}
    assert load_config(SAMPLE_CONFIG, environ=env).redis.url == "redis://b:2/0"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (
            lambda raw: raw["models"][0]["engines"][0].update(weight=0),
            "models[0].engines[0].weight",
        ),
        (lambda raw: raw["models"][1].update(category="telepathy"), "models[1].category"),
        (lambda raw: raw["models"][0].update(capabilities=["flying"]), "models[0].capabilities[0]"),
        (lambda raw: raw["edge"].update(port="http"), "edge.port"),
        (lambda raw: raw.update(services={"quota": {"portt": 1}}), "services.quota.portt"),
        (lambda raw: raw["keys"][0].update(rpm=-1), "keys[0].rpm"),
        (lambda raw: raw["models"][2].update(dimensions=0), "models[2]"),
        (
            lambda raw: raw["models"][0]["engines"][0].update(max_concurrency=-1),
            "models[0].engines[0].max_concurrency",
        ),
        (
            lambda raw: raw["models"][0].update(
                engines=[{"kind": "openai_http", "url": "http://h/v1", "metrics": {"kind": "tgi"}}]
            ),
            "models[0].engines[0].metrics.kind",
        ),
        (
            lambda raw: raw["models"][0].update(
                engines=[{"kind": "openai_http", "url": "http://h/v1", "metrics": {"url": "h:9"}}]
            ),
            "models[0].engines[0].metrics.url",
        ),
        # The reference engine reports no load on /metrics.
        (
            lambda raw: raw["models"][0]["engines"][0].update(metrics={"kind": "vllm"}),
            "models[0].engines[0]",
        ),
        (
            lambda raw: raw.update(services={"router": {"weights": {"queue": -1}}}),
            "services.router.weights.queue",
        ),
        (
            lambda raw: raw.update(
                services={"router": {"affinity": {"balance_rel_threshold": 0.5}}}
            ),
            "services.router.affinity.balance_rel_threshold",
        ),
    ],
)
def test_bad_config_names_the_key_path(tmp_path: Path, mutate: object, path: str) -> None:
    raw = _sample()
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, raw), environ={})
    assert f": {path}:" in str(info.value)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, [1, 2]), environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("edge: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, environ={})


def test_bundled_names_and_extends(tmp_path: Path) -> None:
    local = load_config("local", environ={})
    assert local.services.engine.backend == "local"
    assert [m.id for m in local.models] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    assert local.keys == load_config("sample", environ={}).keys  # inherited from the sample
    child = tmp_path / "child.yaml"
    child.write_text("extends: sample\nedge: {port: 9999}\n")
    config = load_config(child, environ={})
    assert config.edge.port == 9999 and config.edge.host == "127.0.0.1"  # mappings merge
    assert len(config.models) == 3
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop, environ={})


def test_http_engines_need_a_url(tmp_path: Path) -> None:
    raw = _sample()
    raw["models"][0]["engines"] = [{"kind": "openai_http"}]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"models\[0\]\.engines\[0\]"):
        load_config(_write(tmp_path, raw), environ={})


def test_routing_defaults_and_engine_signal_settings(tmp_path: Path) -> None:
    config = load_config("sample", environ={})
    router = config.services.router
    assert (router.weights.queue, router.weights.kv_cache, router.weights.prefix) == (2, 2, 3)
    assert router.affinity.enabled and router.port == 50054
    raw = _sample()
    raw["models"][0]["engines"] = [  # type: ignore[index]
        {"kind": "openai_http", "url": "http://h:8000/v1", "max_concurrency": 8},
        {"kind": "openai_http", "url": "http://g:8000/v1", "metrics": {"kind": "sglang"}},
    ]
    raw["services"] = {"router": {"port": 6000, "queue_timeout_s": 0.5}}
    config = load_config(
        _write(tmp_path, raw), environ={"MESHGATE_SERVICES__ROUTER__WEIGHTS__PREFIX": "0"}
    )
    first, second = config.models[0].engines
    assert (first.metrics.kind, first.max_concurrency, second.metrics.kind) == ("auto", 8, "sglang")
    assert config.services.router.port == 6000 and config.services.router.queue_timeout_s == 0.5
    assert config.services.router.weights.prefix == 0
    assert config.services.router.metrics_port == 9184  # the service's own default is kept
