"""TensorRT plugins for the qm ops (installed as the package ``qm_export_plugins``)."""
