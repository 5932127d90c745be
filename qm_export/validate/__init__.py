"""``validate``: every backend's outputs and selection against the torch reference.

- :mod:`.model_file`: the MODEL argument (ONNX or engine), its provenance, the torch reference.
- :mod:`.inputs`: input sets (the source's seeded inputs, an ``.npz``, or made from the graph).
- :mod:`.compare`: every backend on every input set against the reference (also ``convert``'s check).
- :mod:`.report`: the report, its JSON and tables.
- :mod:`.run`: :func:`~.run.validate_model`, the command as a library function.
"""
