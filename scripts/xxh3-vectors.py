#!/usr/bin/python3
"""Writes test/fixtures/xxh3-vectors.json: reference XXH3-64 values for test/pages/xxh3.test.ts.

The values come from Debian's python3-xxhash (`apt-get install python3-xxhash`), which wraps the system libxxhash:
xxhash.xxh3_64_intdigest(data, seed=s) is XXH3_64bits_withSeed(data, len, s). Run it with the system Python
(/usr/bin/python3: a pyenv or venv interpreter may not see the Debian package) from the repository root:

    /usr/bin/python3 scripts/xxh3-vectors.py

Input bytes: byte i of the generator is the top byte of the 32-bit product i * 2654435761, i.e.

    Python:     ((i * 2654435761) & 0xFFFFFFFF) >> 24
    TypeScript: Math.imul(i, 2654435761) >>> 24

A vector [offset, length, seed, hash] hashes bytes [offset, offset + length) of a buffer holding generator bytes
0 .. offset + length - 1 (so the hashed bytes at offset 1 differ from those at offset 0). Seed and hash are
16-digit lowercase hex strings.
"""
import json
import os
import sys

import xxhash

# 0x9ABCDEF000000001 has the low word of seed 1: going from one to the other changes only the high word.
SEEDS = [0, 1, 0x9E3779B185EBCA87, 0xFFFFFFFFFFFFFFFF, 0x9ABCDEF000000001]
# Every length through the 0, 1-3, 4-8, 9-16, 17-128 and 129-240 paths and the first long ones, then the long
# path around its 64-byte stripes and 1024-byte blocks.
LENGTHS = list(range(0, 301)) + [511, 512, 513, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 8192, 16384, 65536]
# Hashed at an odd offset into a larger buffer: no 4-byte aligned view of the data exists there.
ODD_OFFSETS = [1, 3]
ODD_LENGTHS = [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 100, 128, 129, 200, 240, 241, 255, 256, 300,
               1024, 1025, 4095, 4096, 4097]
ODD_SEEDS = [0, 0x9E3779B185EBCA87]


def generator(count):
    return bytes(((i * 2654435761) & 0xFFFFFFFF) >> 24 for i in range(count))


def main():
    if xxhash.XXHASH_VERSION.split('.')[:2] < ['0', '8']:
        sys.exit(f'libxxhash {xxhash.XXHASH_VERSION}: XXH3 is only stable from 0.8.0')
    cases = [(0, n, s) for s in SEEDS for n in LENGTHS]
    cases += [(o, n, s) for o in ODD_OFFSETS for s in ODD_SEEDS for n in ODD_LENGTHS]
    source = generator(max(o + n for o, n, _ in cases))
    vectors = []
    for offset, length, seed in cases:
        digest = xxhash.xxh3_64_intdigest(source[offset:offset + length], seed=seed)
        vectors.append([offset, length, f'{seed:016x}', f'{digest:016x}'])
    document = {
        'description': 'XXH3-64 (XXH3_64bits_withSeed) reference values, written by scripts/xxh3-vectors.py',
        'libxxhash': xxhash.XXHASH_VERSION,
        'generator': 'byte i = Math.imul(i, 2654435761) >>> 24',
        'vector': '[offset, length, seed, hash]: hash of bytes [offset, offset + length) '
                  'of generator bytes 0 .. offset + length - 1',
        'vectors': vectors,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'xxh3-vectors.json')
    # One vector a line: readable diffs, and still valid JSON.
    lines = ',\n'.join('    ' + json.dumps(v) for v in vectors)
    header = json.dumps({k: v for k, v in document.items() if k != 'vectors'}, indent=2)[:-2]
    with open(path, 'w') as out:
        out.write(header + ',\n  "vectors": [\n' + lines + '\n  ]\n}\n')
    with open(path) as check:
        assert json.load(check) == document
    print(f'{os.path.relpath(path)}: {len(vectors)} vectors, libxxhash {xxhash.XXHASH_VERSION}')


if __name__ == '__main__':
    main()
