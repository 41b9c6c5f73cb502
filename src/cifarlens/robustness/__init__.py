"""Where a model breaks: CIFAR-10-C corruptions generated on the fly and scored on a run (``cifarlens robustness``)."""

from cifarlens.robustness.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    Corruption,
    benchmark_names,
    corrupt,
    corrupt_one,
    parse_corruptions,
    parse_severities,
)

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "Corruption",
    "benchmark_names",
    "corrupt",
    "corrupt_one",
    "parse_corruptions",
    "parse_severities",
]
