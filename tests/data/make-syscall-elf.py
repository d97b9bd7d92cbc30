#!/usr/bin/env python3
"""Write a minimal static x86_64 ELF executable, hand-assembled (no compiler): ELF header
(64 bytes), one PT_LOAD program header (56), then the code.

  make-syscall-elf.py NR OUT
      make system call NR (all arguments 0), then exit 0: the smallest workload calling what
      the seccomp filter denies.
  make-syscall-elf.py --probe PATH OUT
      fork; the child calls setsid(2) (leaving the process group) and pauses forever,
      holding stdout open; the parent opens PATH read-only and exits 0 if that worked, 7 if
      not. A workload that must not see PATH, and whose leftover process must not outlive it.
"""
import os
import struct
import sys

BASE = 0x400000
CODE_AT = 64 + 56


def mov_eax(n):
    return b"\xb8" + struct.pack("<I", n)


def syscall_then_exit(nr):
    return (
        mov_eax(nr)
        + b"\x31\xff\x31\xf6\x31\xd2"  # xor edi,edi; xor esi,esi; xor edx,edx
        + b"\x45\x31\xd2\x45\x31\xc0\x45\x31\xc9"  # xor r10d,r10d; xor r8d,r8d; xor r9d,r9d
        + b"\x0f\x05"  # syscall
        + mov_eax(60) + b"\x31\xff\x0f\x05"  # exit(0)
    )


def probe(path):
    child = mov_eax(112) + b"\x0f\x05"  # setsid
    loop = mov_eax(34) + b"\x0f\x05"  # pause
    child += loop + b"\xeb" + struct.pack("<b", -(len(loop) + 2))  # jmp loop
    exit0 = mov_eax(60) + b"\x31\xff\x0f\x05"
    exit7 = mov_eax(60) + b"\xbf\x07\x00\x00\x00\x0f\x05"
    head = mov_eax(57) + b"\x0f\x05" + b"\x85\xc0"  # fork; test eax,eax
    head += b"\x75" + struct.pack("<b", len(child))  # jnz parent
    # parent: open(path, O_RDONLY)
    lea_at = len(head) + len(child) + 5
    tail_after_lea = b"\x31\xf6\x31\xd2\x0f\x05\x85\xc0"  # xor esi; xor edx; syscall; test
    tail_after_lea += b"\x78" + struct.pack("<b", len(exit0))  # js exit7
    tail_after_lea += exit0 + exit7
    path_at = lea_at + 7 + len(tail_after_lea)
    lea = b"\x48\x8d\x3d" + struct.pack("<i", path_at - (lea_at + 7))  # lea rdi,[rip+path]
    return head + child + mov_eax(2) + lea + tail_after_lea + path.encode() + b"\0"


if sys.argv[1] == "--probe":
    code, out = probe(sys.argv[2]), sys.argv[3]
else:
    code, out = syscall_then_exit(int(sys.argv[1])), sys.argv[2]
entry = BASE + CODE_AT
ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
    "<HHIQQQIHHHHHH", 2, 62, 1, entry, 64, 0, 0, 64, 56, 1, 0, 0, 0
)
size = CODE_AT + len(code)
phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
with open(out, "wb") as f:
    f.write(ehdr + phdr + code)
os.chmod(out, 0o755)
