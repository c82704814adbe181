"""What a scrape-time walk of the rate limiter's LRU map would cost (docs/METRICS.md).

Creates an LRU hash with the `ratelimit` map's layout, fills it with `--entries` buckets,
and times a key-by-key walk (BPF_MAP_GET_NEXT_KEY and a lookup each, as libbpf.count_keys
walks) and a batched one (BPF_MAP_LOOKUP_BATCH) that decodes every bucket. Needs root.

    sudo PYTHONPATH=. /usr/bin/python3 bench/ratelimit_walk.py --entries 65536
"""

import argparse
import ctypes
import os
import struct
import time

from brushtaild.xdp import libbpf, maps
from brushtaild.xdp.loader import MAP_LRU_HASH


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=65536)
    args = parser.parse_args()
    lib = libbpf._lib()
    lib.bpf_map_create.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    )
    lib.bpf_map_update_elem.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint64,
    )
    lib.bpf_map_lookup_batch.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.c_void_p,
    )
    n = args.entries
    key_size, value_size = ctypes.sizeof(maps.RateKey), ctypes.sizeof(maps.Bucket)
    fd = libbpf._check(
        lib.bpf_map_create(MAP_LRU_HASH, b"ratelimit", key_size, value_size, n, None), "create"
    )
    try:
        key, bucket = maps.RateKey(), maps.Bucket()
        for i in range(n):
            key.mac[:] = list(i.to_bytes(6, "big"))
            bucket.last_ns, bucket.credit_ns = i, i % 3
            lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(bucket), 0)

        started = time.perf_counter()
        walk_key = ctypes.create_string_buffer(key_size)
        previous, value, walked = None, maps.Bucket(), 0
        while lib.bpf_map_get_next_key(fd, previous, walk_key) == 0:
            lib.bpf_map_lookup_elem(fd, walk_key, ctypes.byref(value))
            walked += 1
            previous = ctypes.create_string_buffer(walk_key.raw, key_size)
        walk_ms = (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        keys = ctypes.create_string_buffer(key_size * n)
        values = ctypes.create_string_buffer(value_size * n)
        batch, count, total, first = ctypes.c_uint64(), ctypes.c_uint32(), 0, True
        while True:
            count.value = n
            start = None if first else ctypes.byref(ctypes.c_uint64(batch.value))
            ret = lib.bpf_map_lookup_batch(
                fd, start, ctypes.byref(batch), keys, values, ctypes.byref(count), None
            )
            total, first = total + count.value, False
            if ret != 0:  # ENOENT: the last batch
                break
        buckets = list(struct.iter_unpack("=QQ", values.raw[: value_size * total]))
        batch_ms = (time.perf_counter() - started) * 1000
    finally:
        os.close(fd)
    print(
        f"{walked} buckets: key by key {walk_ms:.0f} ms; batched, decoded "
        f"{len(buckets)} {batch_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
