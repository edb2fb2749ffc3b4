"""Analyses of trained models: frequency buckets, result tables, plots."""

from .frequency import FrequencyBuckets, log_spaced_edges, plot_buckets

__all__ = ["FrequencyBuckets", "log_spaced_edges", "plot_buckets"]
