"""A seccomp filter for ``bwrap`` runs: deny the host-kernel surface a task has no use for.

Under bwrap a task talks to the host kernel directly, so every system call is
attack surface. This denies (``EPERM``) the calls that are both rarely needed by
a batch job and a frequent source of kernel exploits or host-global effects:
io_uring, eBPF, perf events, userfaultfd, the key rings (not namespaced), module
and kexec loading, mounts and namespace changes, file handles
(``open_by_handle_at``), swap, reboot, quotas, ``syslog``, port I/O, and POSIX
message queues (they live on in the IPC namespace after their last user, where
nothing lists them, so a warm sandbox could not scrub them between tasks). Calls of
another ABI (i386 through ``int 0x80``, x32) are denied too, since the list only
names the native numbers. Written as classic BPF for bwrap's ``--seccomp``;
x86-64 only — elsewhere runs go without it and ``describe()`` says so.
"""

from __future__ import annotations

import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_NR_OFFSET = 0
_ARCH_OFFSET = 4

DENIED_X86_64 = {
    "syslog": 103,
    "uselib": 134,
    "vhangup": 153,
    "pivot_root": 155,
    "_sysctl": 156,
    "acct": 163,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "get_kernel_syms": 177,
    "query_module": 178,
    "quotactl": 179,
    "nfsservctl": 180,
    "lookup_dcookie": 212,
    "mq_open": 240,
    "mq_unlink": 241,
    "mq_timedsend": 242,
    "mq_timedreceive": 243,
    "mq_notify": 244,
    "mq_getsetattr": 245,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "quotactl_fd": 443,
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def deny_filter(denied: dict[str, int] = DENIED_X86_64) -> bytes:
    """The BPF program (``struct sock_filter[]``): foreign ABIs and ``denied`` get EPERM."""
    numbers = sorted(set(denied.values()))
    deny = SECCOMP_RET_ERRNO | EPERM
    prog = [
        _insn(_LD_W_ABS, 0, 0, _ARCH_OFFSET),
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, deny),
        _insn(_LD_W_ABS, 0, 0, _NR_OFFSET),
    ]
    # each check jumps forward to the final "deny"; checks + 1 (allow) instructions follow it
    remaining = len(numbers) + 1
    prog.append(_insn(_JGE_K, remaining, 0, X32_SYSCALL_BIT))
    for nr in numbers:
        remaining -= 1
        prog.append(_insn(_JEQ_K, remaining, 0, nr))
    prog.append(_insn(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_insn(_RET_K, 0, 0, deny))
    return b"".join(prog)


def native_filter() -> bytes | None:
    """The filter for this machine, or None where the list of numbers is not known."""
    if platform.machine() in ("x86_64", "AMD64"):
        return deny_filter()
    return None
