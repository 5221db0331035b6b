"""A real PostgreSQL for the shared-store tests: Debian's `postgresql` binaries, a cluster made
with `initdb` in a temporary directory, on 127.0.0.1 and an ephemeral port, TLS only (a
certificate from a test CA; `hostssl` is the only way in), a password for the `agentgate` role.

PostgreSQL refuses to run as root: when the tests run as root, the cluster belongs to the
`postgres` user (or `nobody`) and its commands run through `runuser`. SQL from the tests goes
through `psql` over the same verified TLS."""

from __future__ import annotations

import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile

import trustme

from net import free_port

PASSWORD = "pg-test-secret-7Hq"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make test-deps` installs Debian's postgresql")
    return found[-1]


def available() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


class PgServer:
    def __init__(self, base: pathlib.Path, ca: trustme.CA) -> None:
        # A directory of its own, outside pytest's temporary tree (0700 directories that other
        # pytest runs on the machine tidy up): the cluster's owner must reach it.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="agentgate-pg-"))
        os.chmod(self.dir, 0o711)
        self.data = self.dir / "data"
        self.port = free_port()
        self.ca_file = base / "pg-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self.user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(self.dir / "server.key"))
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "server.crt"))
        os.chmod(self.dir / "server.key", 0o600)
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            for f in [self.dir, *self.dir.iterdir()]:
                os.chown(f, self.user.pw_uid, self.user.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "agentgate", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        (self.data / "postgresql.conf").open("a").write(
            f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
            f"ssl = on\nssl_cert_file = '{self.dir / 'server.crt'}'\nssl_key_file = '{self.dir / 'server.key'}'\n"
            "fsync = off\nmax_connections = 100\n")
        (self.data / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        self.start()

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        if self.user:
            cmd = ("runuser", "-u", self.user.pw_name, "--", *cmd)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
        return r

    @property
    def url(self) -> str:
        return f"postgres://agentgate:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def sql(self, query: str) -> str:
        """Runs `query` over verified TLS; the rows as `psql -At` prints them."""
        env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="verify-full", PGSSLROOTCERT=str(self.ca_file))
        r = subprocess.run([shutil.which("psql") or _bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "agentgate",
                            "-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", query],
                           capture_output=True, text=True, env=env, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr}")
        return r.stdout.strip()

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
