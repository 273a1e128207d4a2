"""Words and units for the measurement keys the HTML report shows as column and row names.

The JSON keeps its snake_case keys (a stable format); people read these instead. The
definitions are those of docs/statistics.md (the statistics pass) and docs/inference.md
(the comparisons): mean shift = |mu_data - mu_moving| / sqrt(var_moving), drift score =
mean over channels of the symmetric Kullback-Leibler divergence between N(mu_d, v_d) and
N(mu_m, v_m), in nats. Keys not listed (a plugin's) are shown with spaces for
underscores; dotted keys (``worst.sample``) are labelled part by part.
"""

from __future__ import annotations

LABELS = {
    # statistics pass, per BN layer (docs/statistics.md)
    "channels": "channels",
    "values_per_channel": "values per channel",
    "drift_score": "drift score (symmetric KL, nats)",
    "worst_channel": "worst channel",
    "worst_channel_kl": "worst channel's KL (nats)",
    "mean_shift": "mean shift (moving σ, channel mean)",
    "max_mean_shift": "largest mean shift (moving σ)",
    "variance_ratio": "variance ratio (data / moving, geometric mean)",
    "max_abs_log_variance_ratio": "largest |ln variance ratio|",
    "dead_channels": "dead channels",
    "full_batches": "full batches",
    "batch_mean_spread": "spread of batch means (data σ)",
    "batch_variance_spread": "spread of batch variances (coefficient of variation)",
    "samples": "samples",
    "batches": "batches",
    "batch_size": "batch size",
    "upstream": "upstream BN mode",
    "replicas": "replicas",
    "source": "source",
    # inference comparisons (docs/inference.md)
    "output": "output",
    "run": "run",
    "reference": "compared with",
    "max_abs": "max |difference|",
    "mean_abs": "mean |difference|",
    "p99_abs": "99th percentile |difference|",
    "max_rel": "max relative difference",
    "mean_rel": "mean relative difference",
    "p99_rel": "99th percentile relative difference",
    "mismatched": "elements beyond tolerance",
    "elements": "elements compared",
    "path": "call path",
    "sample": "sample",
    "index": "index",
    "value": "value",
    "abs": "|difference|",
    "rel": "relative difference",
    "worst": "worst element",
    "devices": "devices",
    "gpu": "GPU",
    "tf32": "TensorFloat-32",
    "compute_dtype": "compute dtype",
    "atol": "absolute tolerance",
    "rtol": "relative tolerance",
    "device_table": "device comparisons",
    "data": "data",
    # bnaudit diff's pairing (docs/checkpoints.md)
    "nested_base": "nested model holding the base",
    "pairs": "BN layers paired",
    "unpaired_base": "BN layers of the base without a counterpart",
    "unpaired_tuned": "BN layers of the tuned model without a counterpart",
    "shapes": "input shapes",
}


def label(key: str) -> str:
    """``"max_abs"`` -> ``"max |difference|"``; ``"worst.abs"`` -> ``"worst element: |difference|"``."""
    parts = [LABELS.get(part, part.replace("_", " ")) for part in str(key).split(".")]
    return ": ".join(parts)
