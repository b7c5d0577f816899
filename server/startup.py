"""What a kassa server holds alone, taken before it serves: its gRPC address and its ledger directory.

The workers of one server share its port through SO_REUSEPORT, and the kernel lets any process of the
same user join such a port: a second `kassa serve` on the address would silently take half the
connections to another ledger. So the server that starts (the supervisor, or the only process) first

- binds each of the address's sockets without SO_REUSEPORT (a probe): that fails while anything listens
  there, kassa or not. The probes stay bound, not listening, for the server's life: a port 0 keeps the
  port the kernel chose (the workers are told it), and nothing that binds without SO_REUSEADDR gets it;
- takes an exclusive flock on a lock file named by the port, `listen-port-<port>.lock` in a directory
  only this user can write (`$XDG_RUNTIME_DIR/kassa/`, else `<tempdir>/kassa-<uid>/`, mode 0700), which
  closes the moment between two probes and their listeners: of two servers starting at once, only
  one holds it. It is keyed by the port alone, as a wildcard host (0.0.0.0, ::) and a specific one on
  one port would both pass their probes: two kassa servers of one user on one port number are always
  refused, whatever their hosts. (An abstract Unix socket, as before, has no permissions: any local
  user could take its name and keep kassa from starting.)
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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kassa.server.config import ServerConfig, TlsSection, split_listen

LEDGER_LOCK_NAME = "serve.lock"  # in the ledger directory; holds the pid of the server that has it
ADDRESS_LOCK_DIRECTORY_NAME = "kassa"  # under $XDG_RUNTIME_DIR; else kassa-<uid> under the temp directory
ADDRESS_LOCK_DIRECTORY_MODE = 0o700  # this user's alone: no one else may create or hold its locks
ADDRESS_LOCK_NAME = "listen-port-{port}.lock"  # one per port number a server listens on


class StartupRefused(Exception):
    """The server does not start; the message is the one line that says why."""


@dataclass
class Claims:
    listen: str  # server.listen with the port it holds (the kernel's choice when it was 0)
    probes: list[socket.socket] = field(default_factory=list)  # bound without SO_REUSEPORT, not listening
    address_lock_fd: int = -1  # the flock on the port's lock file
    ledger_lock_fd: int = -1

    def inherited_fds(self) -> list[int]:
        """What the workers are handed: the port's flock and the ledger's flock."""
        return [self.address_lock_fd, self.ledger_lock_fd]


def claim(config: ServerConfig) -> Claims:
    """Take the address and the ledger for a server starting now; StartupRefused when another has them."""
    claims = _claim_address(config.server.listen)
    claims.ledger_lock_fd = _lock_ledger(config.ledger.path)
    return claims


def inherit(config: ServerConfig, fds: list[int]) -> Claims:
    """A worker's claims: the ones its supervisor handed down, checked. A process that was not handed
    them all claims them itself, and is refused while a server holds them. Descriptors that are not
    claims are left alone."""
    _, port = split_listen(config.server.listen)
    address_lock = _address_lock_path(port)
    address_lock_fd = ledger_lock_fd = -1
    for fd in fds:
        if _holds_flock(fd, address_lock):
            address_lock_fd = fd
        elif _holds_flock(fd, Path(config.ledger.path, LEDGER_LOCK_NAME)):
            ledger_lock_fd = fd
    if address_lock_fd < 0 or ledger_lock_fd < 0:
        return claim(config)
    return Claims(config.server.listen, address_lock_fd=address_lock_fd, ledger_lock_fd=ledger_lock_fd)


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
            if claims.address_lock_fd < 0:
                claims.address_lock_fd = _lock_port(port, listen)
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


def _lock_port(port: int, listen: str) -> int:
    """An exclusive flock on the port's lock file (its descriptor); refused while a server holds it."""
    path = _address_lock_path(port)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise StartupRefused(f"cannot open the address lock {path}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupRefused(f"{listen} is in use by another process") from None
    return fd


def _address_lock_path(port: int) -> Path:
    return _address_lock_directory() / ADDRESS_LOCK_NAME.format(port=port)


def _address_lock_directory() -> Path:
    """The directory of the address locks, made this user's alone; refused when another user owns it
    or may write to it (a lock file there could be taken by them)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    directory = Path(runtime, ADDRESS_LOCK_DIRECTORY_NAME) if runtime else \
        Path(tempfile.gettempdir(), f"{ADDRESS_LOCK_DIRECTORY_NAME}-{os.getuid()}")
    try:
        directory.mkdir(mode=ADDRESS_LOCK_DIRECTORY_MODE, exist_ok=True)
        found = os.lstat(directory)
    except OSError as error:
        raise StartupRefused(f"cannot make the address lock directory {directory}: "
                             f"{error.strerror or error}") from None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o022:
        raise StartupRefused(f"the address lock directory {directory} is not this user's alone (owner uid "
                             f"{found.st_uid}, mode {stat.filemode(found.st_mode)}): remove it or fix it")
    return directory


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


def _holds_flock(fd: int, path: Path) -> bool:
    """Whether `fd` is the lock file at `path` and this process holds its flock through it (a
    handed-down descriptor shares the lock its supervisor took)."""
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
        if same:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return same
    except OSError:
        return False


def _release(claims: Claims) -> None:
    for held in claims.probes:
        held.close()
    claims.probes.clear()
    if claims.address_lock_fd >= 0:
        os.close(claims.address_lock_fd)
        claims.address_lock_fd = -1
