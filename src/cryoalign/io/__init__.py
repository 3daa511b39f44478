"""Files: what cryoalign reads and writes, and nothing that aligns.

    maps.py     MRC/CCP4 maps in and out (the only reader of the format)
    models.py   PDB/mmCIF models in and out, moved by a transform
    files.py    atomic writes, the journal of a command's outputs, output-folder rules
    emdb.py     EMDB IDs: download, cache, recommended contours
    robust.py   value statistics a few extreme voxels cannot move (the readers' checks)
    outputs.py  the superposition written out: resampled maps, moved models, ChimeraX scripts
    pictures.py PNG pictures (matplotlib, Agg)
    report.py   report.html pages

The modules here import only `cryoalign`'s base modules (errors, types, transform) and each
other.  The names below are the file API the README names (``cryoalign.io.read_map``, ...).
"""

from .files import (
    FOLDER_MARK,
    WORK_MARK,
    atomic_write,
    check_output_folder,
    check_writable,
    check_writable_folder,
    file_sha256,
    made_dir,
    mark_folder,
    output_folder,
    output_journal,
    write_text,
)
from .maps import MAP_SUFFIXES, MEMMAP_BYTES, check_map_suffix, read_map, write_map
from .models import (
    chain_trace,
    is_trace_atom,
    model_coordinates,
    model_suffix,
    read_model,
    transform_model,
    write_model,
)

__all__ = [
    "FOLDER_MARK",
    "MAP_SUFFIXES",
    "MEMMAP_BYTES",
    "WORK_MARK",
    "atomic_write",
    "chain_trace",
    "check_map_suffix",
    "check_output_folder",
    "check_writable",
    "check_writable_folder",
    "file_sha256",
    "is_trace_atom",
    "made_dir",
    "mark_folder",
    "model_coordinates",
    "model_suffix",
    "output_folder",
    "output_journal",
    "read_map",
    "read_model",
    "transform_model",
    "write_map",
    "write_model",
    "write_text",
]
