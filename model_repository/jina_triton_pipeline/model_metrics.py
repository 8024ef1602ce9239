"""The custom metrics every model exports through Triton's metrics endpoint."""
from __future__ import annotations

TOKENS_METRIC = "jina_encoder_tokens_total"
REQUESTS_METRIC = "jina_model_requests_total"
MIXED_METRIC = "jina_model_mixed_executions_total"
PASSES_METRIC = "jina_encoder_passes_total"
PASS_SECONDS_METRIC = "jina_encoder_pass_seconds_total"
OUTCOMES = {None: "ok", "INVALID_ARG": "invalid", "UNAVAILABLE": "unavailable"}


class ModelMetrics:
    """Triton custom metrics of one model (Python backend >= 23.05; without it, nothing is counted):
    tokens computed (padded) and real through an encoder, the padded/real waste; requests by
    outcome; executions that answered some requests and refused others, the proof that a bad
    request batched with good ones failed alone."""

    def __init__(self, pb_utils, model_name: str, instance: str = ""):
        self.enabled = hasattr(pb_utils, "MetricFamily")
        if not self.enabled:
            return
        counter = pb_utils.MetricFamily.COUNTER
        # the families must outlive their metrics, so they are kept here with them
        self.families = [pb_utils.MetricFamily(name=TOKENS_METRIC, kind=counter,
                                               description="Tokens through the encoder: kind=computed or real"),
                         pb_utils.MetricFamily(name=REQUESTS_METRIC, kind=counter,
                                               description="Requests answered, by outcome"),
                         pb_utils.MetricFamily(name=MIXED_METRIC, kind=counter,
                                               description="Executions whose requests got different outcomes"),
                         pb_utils.MetricFamily(name=PASSES_METRIC, kind=counter,
                                               description="Encoder passes by session: wide (all its threads) "
                                                           "or narrow (one thread, beside another pass)"),
                         pb_utils.MetricFamily(name=PASS_SECONDS_METRIC, kind=counter,
                                               description="Seconds in the engine's passes, by session (the rest of "
                                                           "an execution is the stub's own work)")]
        tokens, requests, mixed, passes, seconds = self.families
        labels = {"model": model_name, "instance": instance or model_name}  # one set per stub process
        self.computed = tokens.Metric(labels={**labels, "kind": "computed"})
        self.real = tokens.Metric(labels={**labels, "kind": "real"})
        self.outcomes = {outcome: requests.Metric(labels={**labels, "outcome": outcome})
                         for outcome in (*OUTCOMES.values(), "internal")}
        self.mixed = mixed.Metric(labels=labels)
        self.passes_by = {width: (passes.Metric(labels={**labels, "session": width}),
                                  seconds.Metric(labels={**labels, "session": width})) for width in ("wide", "narrow")}

    def tokens(self, computed: int, real: int) -> None:
        if self.enabled:
            self.computed.increment(computed)
            self.real.increment(real)

    def passes(self, taken: dict[str, tuple[int, float]]) -> None:
        """`taken`: (passes, seconds in them) by session since the last call."""
        if self.enabled:
            for width, (count, seconds) in taken.items():
                if count:
                    self.passes_by[width][0].increment(count)
                    self.passes_by[width][1].increment(seconds)

    def answered(self, responses: list) -> list:
        """Count each response's outcome; returns the responses."""
        if self.enabled:
            outcomes = [OUTCOMES.get(_code(response), "internal") for response in responses]
            for outcome in outcomes:
                self.outcomes[outcome].increment(1)
            if len(set(outcomes)) > 1:
                self.mixed.increment(1)
        return responses


def _code(response):
    error = response.error() if callable(getattr(response, "error", None)) else getattr(response, "error", None)
    if error is None:
        return None
    code = error.code() if callable(getattr(error, "code", None)) else None
    return {getattr(type(error), "INVALID_ARG", "INVALID_ARG"): "INVALID_ARG",
            getattr(type(error), "UNAVAILABLE", "UNAVAILABLE"): "UNAVAILABLE"}.get(code, "INTERNAL")
