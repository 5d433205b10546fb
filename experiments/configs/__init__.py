"""Config files for the experiments (each module has get_config())."""
