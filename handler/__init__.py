"""The generalized TorchServe handler and its modes (installed as ``fusedbert_handler``)."""
