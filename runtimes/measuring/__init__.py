"""Measuring speed: bench (peers, pooling, its child process), the machine and its peak, FLOPs, the fastest
verified runtime; may import everything else in runtimes (a row's parity comes from proving)."""
