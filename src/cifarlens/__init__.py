"""cifarlens: train CIFAR-10 classifiers fast, then see what they learned."""

__version__ = "0.1.0"
