"""seratio: the reduction ratio of Squeeze-and-Excitation blocks in CIFAR ResNets."""

__version__ = "0.1.0"
