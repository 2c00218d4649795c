"""Adapters for other training loops: `auxssl.integrations.lightning` (PyTorch Lightning callbacks). The
auxiliary tasks themselves need no adapter in any loop: `auxssl.AuxiliaryLoss`."""
