"""What one serving run measures, the targets it is judged against, and the figures it keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.payloads import PayloadKey
from bench.wrk import WrkResult

MODELS = ("mlp", "cnn")
ENCODINGS = ("json", "binary")
CONCURRENCY = (1, 32)
BATCHED_C = 32  # the concurrency of the batching scenarios
MAX_BATCH_ROWS = 32  # the agent's default --max-batch-size, and the raw baseline's big batch
ROWS_PER_REQUEST = 8  # rows of each multi-row CNN request; four of them fill a batch
MULTI_ROW = ("cnn", "binary", ROWS_PER_REQUEST)  # the multi-row request the target is judged on
RAW_BATCHES = {"mlp": (1, MAX_BATCH_ROWS), "cnn": (1, ROWS_PER_REQUEST, MAX_BATCH_ROWS)}

WARMUP_S = 1  # a discarded wrk run before each measured one
STARTS = 3  # start-to-ready and RSS are medians over this many starts
WARM_REQUESTS = 20  # requests before RSS is read
IDLE_S = 0.5  # idle time before RSS is read
MB = 1e6

# Targets from the issue; each is reported as met or missed against the binary rows.
MLP_TARGET_RATIO = 0.8  # agent MLP req/s at c=32 against the trivial endpoint
CNN_TARGET_RATIO = 0.7  # agent CNN rows/s at c=32 with batching against ort batch 32
RSS_TARGET_MB = 100.0
READY_TARGET_S = 1.5


def payload_keys() -> list[PayloadKey]:
    """Every request body a run sends: one row of each model and encoding, and the multi-row."""
    return [*((m, e, 1) for m in MODELS for e in ENCODINGS), MULTI_ROW]


def agent_runs(delayed: bool) -> list[tuple[PayloadKey, int]]:
    """The (body, concurrency) pairs an agent is loaded with, with a queue delay or without."""
    if delayed:
        one_row = [(("cnn", encoding, 1), BATCHED_C) for encoding in ENCODINGS]
    else:
        one_row = [((m, e, 1), c) for m in MODELS for e in ENCODINGS for c in CONCURRENCY]
    return [*one_row, (MULTI_ROW, BATCHED_C)]


def load_label(key: PayloadKey, c: int, delayed: bool = False) -> str:
    """The key of an agent wrk run in `Results.load`, e.g. "cnn binary x8 c=32 +delay"."""
    model, encoding, rows = key
    size = f" x{rows}" if rows > 1 else ""
    return f"{model} {encoding}{size} c={c}" + (" +delay" if delayed else "")


def trivial_label(c: int) -> str:
    """The key of a trivial-endpoint wrk run in `Results.load`."""
    return f"trivial c={c}"


def raw_label(model: str, batch: int) -> str:
    """The key of an onnxruntime figure in `Results.raw_rows_s`, e.g. "cnn b32"."""
    return f"{model} b{batch}"


@dataclass
class Results:
    """Every figure of one run, keyed by the labels above."""

    load: dict[str, WrkResult] = field(default_factory=dict)
    raw_rows_s: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)  # "agent", "trivial"
    ready_s: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, str] = field(default_factory=dict)  # model -> candidate the agent serves
    versions: str = ""  # of the packages and tools measured

    def agent(self, key: PayloadKey, c: int, delayed: bool = False) -> WrkResult:
        """The wrk result of the agent for a body, a concurrency and a queue delay or none."""
        return self.load[load_label(key, c, delayed)]

    def raw(self, model: str, batch: int) -> float:
        """onnxruntime's in-process rows/s of `model` at `batch`."""
        return self.raw_rows_s[raw_label(model, batch)]

    def trivial(self, c: int) -> WrkResult:
        """The wrk result of the trivial endpoint at concurrency `c`."""
        return self.load[trivial_label(c)]

    def failed_runs(self) -> list[str]:
        """Labels of wrk runs with failed requests."""
        return [label for label, result in self.load.items() if result.errors]
