"""Keep the messages a live worker holds from being redelivered, however long their tasks run.

kombu's Redis transport emulates acks: a delivered message sits in the ``unacked`` hash, indexed by its
delivery time in the ``unacked_index`` sorted set, and any worker's periodic sweep puts back on its queue
every message indexed more than ``visibility_timeout`` seconds ago. Alone, that forces a choice between a
short timeout (a crashed worker's batches come back quickly, but a batch or training run longer than the
timeout is redelivered while it still runs) and a long one (nothing long-running is redelivered, but a
crashed worker's batches wait an hour).

This consumer bootstep removes the choice: every ``EMBEDQ_BROKER_HEARTBEAT_S`` the worker's parent process
re-stamps the index entries of the messages it holds (reserved or running), the way SQS consumers extend a
message's visibility. A message stops being re-stamped only when its worker is gone, so the visibility
timeout becomes "time since the worker was last seen alive" and can be short.

The beat runs on the consumer's timer, and a warm shutdown (a scale-down's SIGTERM) stops the consumer before
the pool drains what runs: from then on a thread re-stamps instead, until the worker exits or the consumer
starts again. Without it, a task that outlives the visibility timeout while its worker drains (an index build,
a training step and its checkpoint) went back to the queue and ran on a second worker beside the first.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import bootsteps
from kombu.exceptions import OperationalError

from app.core.config import get_settings

log = logging.getLogger(__name__)


def held_delivery_tags(qos: Any) -> list[str]:
    """Return the delivery tags a kombu virtual QoS holds and has not acknowledged yet."""
    dirty = qos._dirty  # acknowledged, not yet removed from _delivered
    return [tag for tag in list(qos._delivered) if tag not in dirty]


def restamp(qos: Any, now: float | None = None) -> int:
    """Re-stamp this channel's unacked messages as delivered ``now``; return how many were held.

    ``ZADD XX`` only updates entries that still exist, so a message acknowledged or restored by a sweep in
    the meantime is not brought back.
    """
    tags = held_delivery_tags(qos)
    if not tags:
        return 0
    stamp = time.time() if now is None else now
    with qos.channel.conn_or_acquire() as client:
        client.zadd(qos.unacked_index_key, dict.fromkeys(tags, stamp), xx=True)
    return len(tags)


class UnackedHeartbeat(bootsteps.StartStopStep):
    """Consumer bootstep: re-stamp held messages in kombu's unacked index on the worker's timer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.draining: threading.Event | None = None  # set to end the thread that beats while the consumer is stopped

    def start(self, c: Any) -> None:
        self._end_draining()
        channel = c.task_consumer.channel
        if not hasattr(channel.qos, "unacked_index_key"):
            return  # not the Redis transport: nothing to re-stamp
        self.tref = c.timer.call_repeatedly(get_settings().broker_heartbeat_s, self._beat, (channel.qos,))
        self.qos = channel.qos

    def stop(self, c: Any) -> None:
        if self.tref is None:
            return
        self.tref.cancel()
        self.tref = None
        # The timer stops with the consumer; the pool may run on for minutes (a warm shutdown drains it).
        self.draining = threading.Event()
        threading.Thread(
            target=self._drain, args=(self.qos, self.draining), name="unacked-heartbeat", daemon=True
        ).start()

    def shutdown(self, c: Any) -> None:
        self.stop(c)

    def _end_draining(self) -> None:
        if self.draining is not None:
            self.draining.set()
            self.draining = None

    def _drain(self, qos: Any, ended: threading.Event) -> None:
        while not ended.wait(get_settings().broker_heartbeat_s):
            try:
                self._beat(qos)
            except Exception as exc:  # the channel is closed: the pool has drained, what it still held is restored
                log.debug("stopped re-stamping held messages: %r", exc)
                return

    def _beat(self, qos: Any) -> None:
        try:
            restamp(qos)
        except (OperationalError, *qos.channel.connection_errors) as exc:
            # The consumer reconnects on its own; messages it can no longer ack will be restored.
            log.warning("could not re-stamp held messages in Redis: %s", exc)
