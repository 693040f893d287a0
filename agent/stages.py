"""Building the stages a run needs from the config: the serving client and the durable outbox."""

from __future__ import annotations

import logging
import threading

from agent.config import Config
from agent.outbox import Outbox
from agent.serving import Endpoint, RetryPolicy, ServingClient

logger = logging.getLogger(__name__)


def open_outbox(config: Config) -> Outbox | None:
    """The durable outbox in state_dir; None with QoS 0, where nothing acknowledges a result."""
    if config.mqtt.qos == 0:
        return None
    outbox = Outbox(config.state_dir, config.mqtt.outbox.max_messages)
    if len(outbox):
        logger.info("outbox holds results from an earlier run count=%d path=%s; they go first", len(outbox),
                    outbox.path)
    return outbox


def make_serving_client(config: Config, stop: threading.Event) -> ServingClient:
    server = config.server
    headers = dict(server.headers)
    if server.token_file:
        with open(server.token_file, encoding="utf-8") as token:
            headers["Authorization"] = f"Bearer {token.read().strip()}"
    retry = RetryPolicy(server.retry.attempts, server.retry.initial_s, server.retry.max_s)
    return ServingClient(Endpoint(server.url, server.model, server.version, server.label),
                         signature=server.signature, timeout_s=server.timeout_s, retry=retry, headers=headers,
                         ca_certs=server.ca_certs, stop=stop)
