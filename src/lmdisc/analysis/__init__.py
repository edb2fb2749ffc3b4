"""Analyses of trained models: frequency buckets, result tables, plots."""

from .frequency import CountBuckets, FrequencyBuckets, log_spaced_edges, plot_buckets, token_classes

__all__ = ["CountBuckets", "FrequencyBuckets", "log_spaced_edges", "plot_buckets", "token_classes"]
