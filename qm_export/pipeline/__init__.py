"""Multi-step jobs built on the commands: ``run`` (the main job in one command) and ``sweep``."""
