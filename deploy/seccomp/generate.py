#!/usr/bin/env python3
"""Writes sluice-io-uring.json: the OCI seccomp profile lb runs under in containers.

The allowlist is systemd's @system-service set (expanded to syscall names by the local
`systemd-analyze`, 252 when this was generated) plus the three io_uring calls, which the
container runtimes' default profiles block. Everything else fails with EPERM. The sluice binary
embeds the file (`sluice seccomp-profile`), so regenerate, rebuild and commit together.
"""
import json
import subprocess
import sys
from pathlib import Path

IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
NEVER = {"mount", "ptrace", "bpf", "kexec_load", "init_module", "reboot", "swapon"}


def expand(group: str, seen: set) -> set:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    names = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            if line not in seen:
                seen.add(line)
                names |= expand(line, seen)
        else:
            names.add(line)
    return names


def main() -> None:
    names = expand("@system-service", set()) | IO_URING
    if names & NEVER:
        sys.exit(f"refusing to allow {sorted(names & NEVER)}")
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [{"names": sorted(names), "action": "SCMP_ACT_ALLOW"}],
    }
    out = Path(__file__).with_name("sluice-io-uring.json")
    out.write_text(json.dumps(profile, indent=2) + "\n")
    print(f"{out}: {len(names)} syscalls allowed")


if __name__ == "__main__":
    main()
