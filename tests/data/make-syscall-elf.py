#!/usr/bin/env python3
"""Write a minimal static x86_64 ELF executable that makes one system call (number NR, all
arguments 0) and then exits 0: the smallest workload that calls what the seccomp filter
denies. Hand-assembled, no compiler: ELF header (64 bytes), one PT_LOAD program header (56),
then the code.

usage: make-syscall-elf.py NR OUT
"""
import os
import struct
import sys

nr, out = int(sys.argv[1]), sys.argv[2]
base = 0x400000
code = (
    b"\xb8" + struct.pack("<I", nr)  # mov eax, NR
    + b"\x31\xff\x31\xf6\x31\xd2"  # xor edi,edi; xor esi,esi; xor edx,edx
    + b"\x45\x31\xd2\x45\x31\xc0\x45\x31\xc9"  # xor r10d,r10d; xor r8d,r8d; xor r9d,r9d
    + b"\x0f\x05"  # syscall
    + b"\xb8\x3c\x00\x00\x00\x31\xff\x0f\x05"  # mov eax, 60 (exit); xor edi,edi; syscall
)
entry = base + 64 + 56
ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
    "<HHIQQQIHHHHHH", 2, 62, 1, entry, 64, 0, 0, 64, 56, 1, 0, 0, 0
)
size = 64 + 56 + len(code)
phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
with open(out, "wb") as f:
    f.write(ehdr + phdr + code)
os.chmod(out, 0o755)
