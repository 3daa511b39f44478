"""What users do with alignments, each built on `cryoalign.core` and `cryoalign.io`.

fit.py          a model's chains placed into a map (`fit_model`); simulate.py: a map from a model
comparison.py   difference maps, masses, FSC (`compare`)
variation.py    mean, variance and components over many aligned maps (`variance`)
batching.py     many pairs from a table, resumable (`batch`)
catalogue/      the searchable catalogue: storage, pre-filter, search (`index`, `search`)
rmsd.py         model RMSD under an estimated transform
"""
