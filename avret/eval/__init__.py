"""Evaluation: the field's cross-modal retrieval metrics and their reports."""

from avret.eval.report import format_details, format_map_table
from avret.eval.retrieval import (
    DEFAULT_KS,
    CrossModalReport,
    RetrievalMetrics,
    cross_modal_report,
    retrieval_metrics,
)

__all__ = [
    "DEFAULT_KS",
    "CrossModalReport",
    "RetrievalMetrics",
    "cross_modal_report",
    "format_details",
    "format_map_table",
    "retrieval_metrics",
]
