"""The records room: what a run leaves behind and everything computed from it, in pure Python (no torch).

    schema.py       the record's types (RunRecord, Stage, ...) and `problems`, the one validator
    build.py        `build_record`, the one producer of a record (typed with the schema)
    store.py        identity (config_hash), provenance, writing (validated, atomic, never overwritten), reading
    predictions.py  per-example prediction files: their lines, hashes, re-scoring and the anatomy of errors
    metrics.py      the metrics table (name, label, unit, direction) and the metrics of an accuracy matrix
    stats.py        spreads, intervals and paired tests over seeds
    text.py         answer normalisation
"""
