"""The cryoalign input-contract fuzzer (entry point: benchmarks/fuzz.py; see benchmarks/FUZZING.md).

generators  how each kind of mutated input is made (a `Case` from (seed, index))
harness     running a case (in-process CLI, or subprocesses for concurrent runs), watching the
            case folder for modified inputs and partial outputs, timing, classifying the outcome;
            the worker pool and replay
report      summary.md / failures.tsv / cases.tsv
"""
