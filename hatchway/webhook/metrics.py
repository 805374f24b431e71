"""The bundled webhook's own metrics (`GET /metrics` on its listener): its
auth decisions and how long it took to answer.  hatchway-keys runs for a few
milliseconds per key check and keeps no counters; the server it asks does.
With another auth webhook, hatchway-keys' syslog lines (decision=, latency_ms=)
are the record.  Every metric is documented in hatchway(8)."""

from __future__ import annotations

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WebhookMetrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        self.registry = r = CollectorRegistry()
        self.decisions = Counter("hatchway_webhook_pubkey_decisions", "Answers to /pubkey: "
                                 "allow or deny, and why (key, expired, unknown, bad_key, "
                                 "malformed)", ["decision", "why"], registry=r)
        self.seconds = Histogram("hatchway_webhook_request_seconds", "Time to answer a request, "
                                 "by route", ["route"], buckets=BUCKETS, registry=r)

    def decided(self, allowed: bool, why: str) -> None:
        self.decisions.labels("allow" if allowed else "deny", why).inc()

    def took(self, route: str, seconds: float) -> None:
        self.seconds.labels(route).observe(seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
