#!/usr/bin/env python3
"""Benchmark dataset: a database-like volume (structured rows, compressible), many small source files, and
incompressible media. Deterministic (seeded). SCALE multiplies the sizes (1.0 ≈ 1.7 GiB).

usage: gen_dataset.py ROOT [SCALE]
"""
import os
import random
import sys

root = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rnd = random.Random(42)
if os.path.exists('/usr/share/dict/words'):
    words = open('/usr/share/dict/words').read().split()
else:
    words = [f"w{i}" for i in range(5000)]

# Database-like segments: 64 × 16 MiB at scale 1.
d = os.path.join(root, 'db')
os.makedirs(d, exist_ok=True)
for i in range(max(1, int(64 * scale))):
    rows, size = [], 0
    while size < 16 << 20:
        row = (f"{rnd.randint(1, 10**9)}|{rnd.choice(words)}|{rnd.choice(words)}|"
               f"{rnd.random():.6f}|2026-11-{rnd.randint(1, 28):02d}\n").encode()
        row += os.urandom(rnd.choice([0, 0, 0, 8, 16]))
        rows.append(row)
        size += len(row)
    with open(os.path.join(d, f'seg{i:04d}'), 'wb') as f:
        f.write(b''.join(rows))

# Small files: 30,000 at scale 1, in 300 × 7 directories.
d = os.path.join(root, 'small')
for i in range(max(1, int(30000 * scale))):
    sub = os.path.join(d, f'dir{i % 300:03d}', f'sub{i % 7}')
    os.makedirs(sub, exist_ok=True)
    n = rnd.randint(64, 8192)
    txt = ' '.join(rnd.choice(words) for _ in range(n // 6)).encode()[:n]
    with open(os.path.join(sub, f'file{i}.js'), 'wb') as f:
        f.write(txt)

# Media: incompressible, 8 × 64 MiB at scale 1.
d = os.path.join(root, 'media')
os.makedirs(d, exist_ok=True)
for i in range(max(1, int(8 * scale))):
    with open(os.path.join(d, f'clip{i}.mp4'), 'wb') as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
