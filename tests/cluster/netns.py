"""A network namespace with nothing but a loopback interface, and a TCP relay into it.

The cluster's processes (etcd, kube-apiserver, the controllers, kwok, Knative) run inside such a
namespace: nothing they try can leave the machine (there is no other interface, so a pod IP, a
registry or a DNS server is unreachable by construction), and the ports Knative hard-codes
(8080, 8008, ...) clash with nothing on the host. The tests reach the API server through the relay.

Run as a script (``python netns.py hold`` / ``python netns.py relay ...``); the fixtures use
``Namespace`` and ``relay``. Needs root (``unshare``/``setns`` of a network namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SCRIPT = Path(__file__).resolve()


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _libc_call("setns", fd, CLONE_NEWNET)
    finally:
        os.close(fd)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)  # struct ifreq: name, flags, padding to 40 bytes
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _hold() -> None:
    """Create the namespace, bring loopback up, and keep it until stdin closes."""
    _libc_call("unshare", CLONE_NEWNET)
    _loopback_up()
    print("ready", flush=True)
    sys.stdin.read()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _relay(listener: socket.socket, host: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        writer.close()
        up_writer.close()

    server = await asyncio.start_server(handle, sock=listener)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    await server.serve_forever()


def _relay_main(args: argparse.Namespace) -> None:
    # A socket belongs to the namespace it was created in: listen first, then switch for the connects.
    if args.listen_netns:
        _enter(args.listen_netns)
    listener = socket.create_server(("127.0.0.1", args.listen_port))
    if args.connect_netns:
        _enter(args.connect_netns)
    asyncio.run(_relay(listener, "127.0.0.1", args.connect_port))


# -- used by the fixtures ----------------------------------------------------------------------

class Namespace:
    """A loopback-only network namespace, alive while its holder process runs."""

    def __init__(self) -> None:
        self._holder = subprocess.Popen([sys.executable, str(SCRIPT), "hold"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            self._holder.wait(10)
            raise RuntimeError("could not create a network namespace (root is needed): "
                               f"{self._holder.stderr.read() if self._holder.stderr else ''}")
        self.path = f"/proc/{self._holder.pid}/ns/net"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (nsenter execs it: the pid is the program's own)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def close(self) -> None:
        if self._holder.poll() is None:
            assert self._holder.stdin is not None
            self._holder.stdin.close()
            self._holder.wait(10)


def relay(*, connect_port: int, connect_netns: str | None, listen_port: int = 0,
          listen_netns: str | None = None, log: Path) -> tuple[subprocess.Popen[str], int]:
    """Start a relay from 127.0.0.1:listen_port (0: a free one) to 127.0.0.1:connect_port; returns it and its port."""
    argv = [sys.executable, str(SCRIPT), "relay", "--listen-port", str(listen_port),
            "--connect-port", str(connect_port)]
    if connect_netns:
        argv += ["--connect-netns", connect_netns]
    if listen_netns:
        argv += ["--listen-netns", listen_netns]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "listening":
        proc.kill()
        raise RuntimeError(f"relay did not start: {log.read_text()}")
    return proc, int(line[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hold")
    r = sub.add_parser("relay")
    r.add_argument("--listen-port", type=int, default=0)
    r.add_argument("--listen-netns")
    r.add_argument("--connect-port", type=int, required=True)
    r.add_argument("--connect-netns")
    args = parser.parse_args()
    _hold() if args.command == "hold" else _relay_main(args)


if __name__ == "__main__":
    main()
