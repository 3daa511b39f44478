"""cryoalign: superimpose cryo-EM density maps.

    >>> import cryoalign
    >>> result = cryoalign.align("source.mrc", "target.mrc", source_contour=0.3, target_contour=0.5)
    >>> result.T_target_source          # 4x4: source world coordinates (Å) -> target's
    >>> result.score.value, result.timings_s
"""
__version__ = "0.1.0"

from .errors import InputError
from .io import read_map, read_model, write_map, write_model, transform_model
from .types import AlignResult, DensityMap
from .config import AlignConfig
from .pipeline import align

__all__ = ["align", "AlignConfig", "AlignResult", "DensityMap", "InputError", "read_map",
           "read_model", "write_map", "write_model", "transform_model", "__version__"]
