"""echoclr: EchoCLR self-supervised pretraining and label-efficient echo classifiers."""

__version__ = "0.1.0"
