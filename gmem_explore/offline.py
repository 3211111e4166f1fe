"""Whether the Hugging Face Hub can be used now: HF_HUB_OFFLINE, the hub cache folder, and a quick probe of the
endpoint. The autoencoders and encoders ask it before diffusers / transformers would retry an unreachable Hub for
25-60 s; checkpoints/hub.py asks it before a download. It imports nothing of this package, so anything may use it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse


def is_offline() -> bool:
    """HF_HUB_OFFLINE read at call time (huggingface_hub reads it only once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def cache_only(source) -> bool:
    """Whether weights named by a Hub id (the SD-VAE, DINOv2) must come from the cache alone: HF_HUB_OFFLINE is set
    or the Hub cannot be reached. Without this, diffusers and transformers retry the unreachable Hub for 25-60 s
    before failing; with it they load the cached copy, or fail at once. A local folder needs no Hub."""
    if Path(str(source)).expanduser().is_dir():
        return False
    return is_offline() or not hub_reachable()


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default; read at call time."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hub_address() -> tuple[str, int]:
    """Where a connection to the Hub goes first: the endpoint (HF_ENDPOINT, e.g. a mirror on its own port), or the
    proxy that requests / httpx use for it (HTTPS_PROXY, ALL_PROXY; NO_PROXY honoured)."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    scheme, host = endpoint.scheme or "https", endpoint.hostname or "huggingface.co"
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        where = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if where.hostname:
            return where.hostname, where.port or (1080 if where.scheme.startswith("socks") else 80)
    return host, endpoint.port or (443 if scheme == "https" else 80)


UNREACHABLE_MEMORY_SECONDS = 60.0  # a failed probe is believed this long: one load asks up to three times
_unreachable_since: dict = {}  # (host, port) -> time.monotonic() of the failed probe


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub endpoint or its proxy: without it huggingface_hub retries for ~25 s before
    failing. The name look-up counts too (a resolver that does not answer takes 5 s per try), so the attempt runs
    in a thread that is given up after `timeout` seconds. A failure is remembered for UNREACHABLE_MEMORY_SECONDS:
    behind a firewall that drops packets, a pipeline with the SD-VAE and DINOv2 asked three times, 3 s each."""
    host, port = hub_address()
    failed = _unreachable_since.get((host, port))
    if failed is not None and time.monotonic() - failed < UNREACHABLE_MEMORY_SECONDS:
        return False
    answer = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    attempt = threading.Thread(target=connect, name="gmem-hub-probe", daemon=True)
    attempt.start()
    attempt.join(timeout)
    reachable = bool(answer and answer[0])
    if reachable:
        _unreachable_since.pop((host, port), None)
    else:
        _unreachable_since[(host, port)] = time.monotonic()
    return reachable
