"""Counters for GET /metrics, written in Prometheus' text format (no client library needed)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..generate import Engine

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    requests: dict[str, int] = field(default_factory=dict)  # by outcome: finish reason, "aborted" or HTTP status
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_counts: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS_S))
    ttft_sum_s: float = 0.0
    ttft_count: int = 0

    def count_request(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_sum_s += seconds
        self.ttft_count += 1
        for i, bound in enumerate(TTFT_BUCKETS_S):
            self.ttft_counts[i] += seconds <= bound

    def render(self, engine: Engine) -> str:
        """The text of /metrics; the engine's numbers are read without stopping it (a moment's snapshot)."""
        lines = ["# HELP neva_requests_total Chat completion requests by outcome.", "# TYPE neva_requests_total counter"]
        lines += [f'neva_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())]
        gauges = {"neva_prompt_tokens_total": ("counter", "Prompt tokens of answered requests.", self.prompt_tokens),
                  "neva_completion_tokens_total": ("counter", "Tokens generated.", self.completion_tokens),
                  "neva_requests_waiting": ("gauge", "Requests queued for a batch slot.", engine.num_waiting),
                  "neva_requests_running": ("gauge", "Requests in the decode batch.", engine.num_running),
                  "neva_kv_cache_free_blocks": ("gauge", "Free KV-cache blocks.", engine.allocator.num_free_blocks),
                  "neva_decode_tokens_per_second": ("gauge", "Decode tokens/s over the server's life.",
                                                    engine.timings.decode_tokens_per_s)}
        for name, (kind, help_text, value) in gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# HELP neva_time_to_first_token_seconds Time from a request's arrival to its first token.",
                  "# TYPE neva_time_to_first_token_seconds histogram"]
        lines += [f'neva_time_to_first_token_seconds_bucket{{le="{b}"}} {c}'
                  for b, c in zip(TTFT_BUCKETS_S, self.ttft_counts)]
        lines += [f'neva_time_to_first_token_seconds_bucket{{le="+Inf"}} {self.ttft_count}',
                  f"neva_time_to_first_token_seconds_sum {self.ttft_sum_s}",
                  f"neva_time_to_first_token_seconds_count {self.ttft_count}"]
        return "\n".join(lines) + "\n"
