"""What every benchmark records next to its figures (the same record as a run's ``run.json``)."""

from auxssl.engine.machine import cpu_model, machine_info

__all__ = ["cpu_model", "machine_info"]
