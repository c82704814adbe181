"""brushtail: an eBPF-accelerated DHCPv4 server for ISP edge sites."""

__version__ = "0.1.0"
