"""What a kassa server holds alone, taken before it serves: its gRPC address and its ledger directory.

The workers of one server share its port through SO_REUSEPORT, and the kernel lets any process of the
same user join such a port: a second `kassa serve` on the address would silently take half the
connections to another ledger. So the server that starts (the supervisor, or the only process) first

- binds each of the address's sockets without SO_REUSEPORT (a probe): that fails while anything listens
  there, kassa or not. The probes stay bound, not listening, for the server's life: a port 0 keeps the
  port the kernel chose (the workers are told it), and nothing that binds without SO_REUSEADDR gets it;
- takes a lock named by the address (an abstract Unix socket: it goes with the process, and it lives
  in the network namespace the port does), which closes the moment between two probes and their
  listeners: of two servers starting at once, only one holds it;
- takes an exclusive flock on `serve.lock` in the ledger directory, which names its pid.

Its workers are handed the lock and the flock (inherited descriptors) and check that they hold them; a
process without them takes its own, and is refused while a server holds them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kassa.server.config import ServerConfig, TlsSection, split_listen

LEDGER_LOCK_NAME = "serve.lock"  # in the ledger directory; holds the pid of the server that has it
ADDRESS_LOCK_PREFIX = "\0kassa-listen:"  # abstract Unix socket names: one per address a server listens on
ABSTRACT_SOCKETS = sys.platform.startswith("linux")  # elsewhere the probe alone guards the address


class StartupRefused(Exception):
    """The server does not start; the message is the one line that says why."""


@dataclass
class Claims:
    listen: str  # server.listen with the port it holds (the kernel's choice when it was 0)
    probes: list[socket.socket] = field(default_factory=list)  # bound without SO_REUSEPORT, not listening
    address_locks: list[socket.socket] = field(default_factory=list)
    ledger_lock_fd: int = -1

    def inherited_fds(self) -> list[int]:
        """What the workers are handed: the address locks and the ledger's flock."""
        return [lock.fileno() for lock in self.address_locks] + [self.ledger_lock_fd]


def claim(config: ServerConfig) -> Claims:
    """Take the address and the ledger for a server starting now; StartupRefused when another has them."""
    claims = _claim_address(config.server.listen)
    claims.ledger_lock_fd = _lock_ledger(config.ledger.path)
    return claims


def inherit(config: ServerConfig, fds: list[int]) -> Claims:
    """A worker's claims: the ones its supervisor handed down, checked. A process that was not handed
    them all claims them itself, and is refused while a server holds them. Descriptors that are not
    claims are left alone."""
    names = {_address_lock_name(address) for address in _addresses(config.server.listen)}
    locks, ledger_lock_fd = [], -1
    for fd in fds:
        if _is_socket(fd):
            lock = socket.socket(fileno=fd)
            if lock.family == socket.AF_UNIX and _as_text(lock.getsockname()) in names:
                locks.append(lock)
            else:
                lock.detach()
        elif _holds_ledger_lock(fd, config.ledger.path):
            ledger_lock_fd = fd
    # Each lock kept names one of this address's sockets; the supervisor may have left out some it
    # could not bind (an address family this host lacks), never all of them.
    if ledger_lock_fd < 0 or (ABSTRACT_SOCKETS and not locks):
        for lock in locks:
            lock.detach()
        return claim(config)
    return Claims(config.server.listen, address_locks=locks, ledger_lock_fd=ledger_lock_fd)


def read_tls_files(tls: TlsSection) -> tuple[bytes, bytes, bytes | None]:
    """The key, the certificate and the client CA (None: no mutual TLS), PEM; refused naming the key
    whose file cannot be read."""
    key = _read_tls_file("key_file", tls.key_file)
    certificate = _read_tls_file("cert_file", tls.cert_file)
    return key, certificate, _read_tls_file("client_ca_file", tls.client_ca_file) if tls.client_ca_file else None


def _read_tls_file(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise StartupRefused(f"tls.{key}: cannot read {path}: {error.strerror or error}") from None


def _claim_address(listen: str) -> Claims:
    """Probe and lock every address `listen` resolves to. One that this host does not have (no IPv6,
    say) is left out, as gRPC leaves it out; none left is a refusal."""
    _, port = split_listen(listen)
    claims = Claims(listen)
    unavailable = None
    try:
        for family, address in _addresses(listen):
            try:
                probe = _probe(family, address[:1] + (port,) + address[2:])
            except OSError as error:
                if error.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise
                unavailable = unavailable or error
                continue
            claims.probes.append(probe)
            port = probe.getsockname()[1]  # port 0: every address gets the one the kernel chose
            if ABSTRACT_SOCKETS:
                claims.address_locks.append(_lock_address((family, probe.getsockname()), listen))
        if not claims.probes:
            raise unavailable or OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    except OSError as error:
        _release(claims)
        if error.errno == errno.EADDRINUSE:
            raise StartupRefused(f"{listen} is in use by another process") from None
        raise StartupRefused(f"cannot listen on {listen}: {error.strerror or error}") from None
    except StartupRefused:
        _release(claims)
        raise
    claims.listen = f"{host_of(listen)}:{port}"
    return claims


def _probe(family: int, address: tuple) -> socket.socket:
    """A socket bound to `address` without SO_REUSEPORT: binding fails while anything listens there."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Connections of an earlier run in TIME_WAIT must not keep a restart off its port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError:
        probe.close()
        raise
    return probe


def host_of(listen: str) -> str:
    """The host part of server.listen as written (an IPv6 address keeps its brackets)."""
    return listen.rpartition(":")[0]


def _lock_address(address, listen: str) -> socket.socket:
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(_address_lock_name(address))
    except OSError as error:
        lock.close()
        raise StartupRefused(f"{listen} is in use by another process") from error
    return lock


def _address_lock_name(address) -> str:
    family, sockaddr = address
    return f"{ADDRESS_LOCK_PREFIX}{sockaddr[0]}:{sockaddr[1]}"


def _as_text(name) -> str:
    """An abstract socket's name as getsockname() gives it (bytes) as bind() takes it."""
    return "\0" + name[1:].decode() if isinstance(name, bytes) else name


def _addresses(listen: str) -> list[tuple[int, tuple]]:
    """(family, socket address) for each address `listen` names, as gRPC will listen on them."""
    host, port = split_listen(listen)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupRefused(f"server.listen: cannot resolve {host}: {error.strerror}") from None
    unique = []
    for family, _, _, _, sockaddr in found:
        if (family, sockaddr) not in unique:
            unique.append((family, sockaddr))
    return unique


def _lock_ledger(path: str) -> int:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(path, LEDGER_LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise StartupRefused(f"cannot open the ledger at {path}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise StartupRefused(f"the ledger at {path} is in use by another kassa server{who}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holds_ledger_lock(fd: int, path: str) -> bool:
    """Whether `fd` is the ledger's lock file and this process holds its flock through it (a handed-down
    descriptor shares the lock its supervisor took)."""
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(Path(path, LEDGER_LOCK_NAME)))
        if same:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return same
    except OSError:
        return False


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _release(claims: Claims) -> None:
    for held in (*claims.probes, *claims.address_locks):
        held.close()
    claims.probes.clear()
    claims.address_locks.clear()
