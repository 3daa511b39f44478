"""cryoalign: superimpose cryo-EM density maps.

>>> import cryoalign
>>> result = cryoalign.align("source.mrc", "target.mrc", source_contour=0.3, target_contour=0.5)
>>> result.T_target_source          # 4x4: source world coordinates (Å) -> target's
>>> result.score.value, result.timings_s
"""

__version__ = "0.4.0"

# Names are imported when first used (a public function never shares its name with a
# module: importing the module would replace it), so `import cryoalign` (and the command line's
# --help and input checks) does not pay for scipy, numba and the pipeline.
_WHERE = {
    "align": "core.pipeline",
    "align_prepared": "core.pipeline",
    "AlignConfig": "config",
    "AlignResult": "types",
    "DensityMap": "types",
    "InputError": "errors",
    "read_map": "io",
    "read_model": "io",
    "write_map": "io",
    "write_model": "io",
    "transform_model": "io",
    "prepare_map": ("core.prepare", "prepare"),
    "PreparedMap": "core.prepare",
    "load_prepared": ("core.prepare", "load"),
    "compare": ("apps.comparison", "compare"),
    "variance": ("apps.variation", "variance"),
    "batch": ("apps.batching", "batch"),
    "index": ("apps.catalogue", "index"),
    "search": ("apps.catalogue", "search"),
    "fit_model": ("apps.fit", "fit_model"),
}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'cryoalign' has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


def __dir__():
    return __all__
