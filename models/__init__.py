"""Model recipes (TOML data, no code): installed as ``qm_export_recipes``; see ``qm_export.recipes``."""
