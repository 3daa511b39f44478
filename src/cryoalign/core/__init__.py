"""The alignment: every stage of one superposition and the one ranking path.

    prepare.py      a map made ready once: contour, points, key points, descriptors (`PreparedMap`)
    pointcloud.py   the contoured map as points; keypoints.py, features.py: key points, descriptors
    match.py        descriptor matching; register.py: poses from matches (RANSAC-style)
    refine.py       point ICP; maprefine.py: map-on-map refinement
    score.py        the score terms; rank.py: the one ranking path (screen, refine, order)
    local.py        local search (a part inside a larger map); recall.py: the wider search
    exhaustive.py   the exhaustive rotation x FFT-translation scan behind the descriptors
    symmetry.py     equivalent poses; confidence.py: the verdict and its reasons
    pipeline.py     `align()`: the stage order

Imports only the base modules (config, types, errors, transform, timing, executor) and
`cryoalign.io` (maps are read here when `align` is given paths or EMDB IDs).
"""
