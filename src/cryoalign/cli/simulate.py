"""`cryoalign simulate`: the density map of a model (molmap style)."""

from __future__ import annotations

from .common import _refuse_overwriting_inputs, _split_chains, add_quiet


def add_parser(sub, d) -> None:
    s = sub.add_parser(
        "simulate",
        help="density map of a model (molmap style)",
        description="One Gaussian per heavy atom (sigma = 0.225 x resolution, height = "
        "atomic number), on a grid of resolution/3 Å.",
    )
    s.add_argument("model", help="PDB/mmCIF model")
    s.add_argument("--resolution", type=float, required=True, help="resolution in Å")
    s.add_argument("-o", "--output", required=True, help="map to write (.mrc, .map, .ccp4; add .gz to compress)")
    s.add_argument("--chains", default=None, help="comma-separated chain names (default: all)")
    s.add_argument("--voxel", type=float, default=None, help="voxel size in Å (default resolution/3)")
    add_quiet(s)


def run(args) -> int:
    from .. import io
    from ..apps import simulate

    _refuse_overwriting_inputs([args.output], [args.model])
    io.check_map_suffix(args.output)
    io.check_writable(args.output)
    st = io.read_model(args.model)
    chains = _split_chains(args.chains)
    density = simulate.simulate(st, args.resolution, chains=chains, voxel_A=args.voxel)
    level = simulate.contour_for(density, simulate.model_mass_Da(st, chains=chains))
    io.write_map(density, args.output)
    nx, ny, nz = density.shape_xyz
    print(
        f"wrote {args.output}: {nx}x{ny}x{nz} voxels of {density.voxel_size_A[0]:.3g} Å, "
        f"resolution {args.resolution:g} Å; suggested contour {level:.5g} (encloses the model's "
        "volume at 1.21 Å^3/Da)"
    )
    return 0
