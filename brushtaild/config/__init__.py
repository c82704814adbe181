"""The configuration: the model (model.py), reading and validating the file (load.py) and
which keys a reload applies (reload.py). The engine imports only the model."""
