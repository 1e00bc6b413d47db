"""distill: students from teachers (pruning, divergence losses, logit cache, training).

The stages, each one function from settings to files (edgedistill.distill.stage): `prune`, `cache_logits`,
`distill`, with `PruneSettings`, `CacheSettings`, `DistillSettings`.
"""

_STAGE = ("prune", "cache_logits", "distill", "PruneSettings", "CacheSettings", "DistillSettings")


def __getattr__(name):  # the stage module imports heavy libraries only when a stage is used
    if name in _STAGE:
        from edgedistill.distill import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'edgedistill.distill' has no attribute {name!r}")
