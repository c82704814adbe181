"""The cluster's certificates: a CA, one ECDSA P-256 certificate per site, a CRL.

`brushtail pki` uses this for sites that are not deployed with Ansible; the daemon uses the
checks at the end on the files the brushtail_pki role (or this module) installed. A site's
certificate names the site in its CN and in a SAN dNSName and carries both the serverAuth
and clientAuth purposes: every site dials its peers and is dialled by them. P-256 because
DTLS 1.2 in OpenSSL 3.0 cannot use an Ed25519 server certificate.

Times are naive UTC datetimes, as cryptography 38 (Debian 12) reads them from certificates.

A CA directory holds `ca.key` (0600), `ca.crt`, `ca.crl` and `issued/SERIAL.crt`, a copy
of every certificate it issued, which is what `list` and `revoke` by site name read. An
issued site gets `site.key` (0600), `site.crt` and `ca.crt`: the names the brushtail_pki
role uses in /etc/brushtail/pki.
"""

import os
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from brushtaild.config.model import SITE_NAME_RE

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CA_CRL = "ca.crl"
ISSUED = "issued"
SITE_KEY = "site.key"
SITE_CERT = "site.crt"
# Issued a little in the past, so a peer whose clock is a few minutes behind accepts it.
BACKDATE = timedelta(minutes=5)
# A key file's mode may give nothing to group and others.
PRIVATE = 0o077


class PkiError(Exception):
    """Why a PKI operation could not be done; nothing was written."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate the CA issued, as `brushtail pki list` shows it."""

    site: str
    serial: int
    not_before: datetime
    not_after: datetime
    revoked: datetime | None  # when the CRL says it was revoked

    def state(self, now: datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        return "expired" if now >= self.not_after else "valid"


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode`, refusing to replace anything there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"{path}: already exists; not overwritten") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _replace(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (a crash leaves the old CRL, never half a new one)."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return item.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True, slots=True)
class Ca:
    """A CA directory's certificate and key, loaded to sign."""

    directory: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: Path) -> "Ca":
        try:
            certificate = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key(
                (directory / CA_KEY).read_bytes(), password=None
            )
        except OSError as exc:
            raise PkiError(f"{exc.filename}: {exc.strerror}") from None
        except ValueError as exc:
            raise PkiError(f"{directory}: not a CA directory ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{directory / CA_KEY}: not an ECDSA key")
        return cls(directory, certificate, key)

    def _builder(self) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .issuer_name(self.certificate.subject)
            .serial_number(x509.random_serial_number())
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )

    def issue(self, site: str, days: int, out: Path, now: datetime) -> x509.Certificate:
        """A new key and certificate for `site`, written into `out` as site.key (0600),
        site.crt and ca.crt (the brushtail_pki role's layout) and recorded under issued/.
        Nothing is written if one of the three files is there already."""
        if not SITE_NAME_RE.fullmatch(site):
            raise PkiError(f"{site!r}: a site name is 1-63 characters of a-z, 0-9 and '-'")
        if days < 1:
            raise PkiError(f"{days} days: a certificate is valid for at least one day")
        for name in (SITE_KEY, SITE_CERT, CA_CERT):
            if (out / name).exists():
                raise PkiError(f"{out / name}: already exists; not overwritten")
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            self._builder()
            .subject_name(_name(site))
            .public_key(key.public_key())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(site)]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        out.mkdir(mode=0o750, parents=True, exist_ok=True)
        _write_new(out / SITE_KEY, _key_pem(key), 0o600)
        _write_new(out / SITE_CERT, _pem(certificate), 0o644)
        _write_new(out / CA_CERT, _pem(self.certificate), 0o644)
        issued = self.directory / ISSUED
        issued.mkdir(mode=0o755, exist_ok=True)
        _write_new(issued / f"{certificate.serial_number:x}.crt", _pem(certificate), 0o644)
        return certificate

    def issued(self) -> list[Issued]:
        revoked = {r.serial_number: r.revocation_date for r in self.revoked()}
        found = []
        for path in sorted((self.directory / ISSUED).glob("*.crt")):
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
            found.append(
                Issued(
                    site=certificate_site(certificate) or "?",
                    serial=certificate.serial_number,
                    not_before=certificate.not_valid_before,
                    not_after=certificate.not_valid_after,
                    revoked=revoked.get(certificate.serial_number),
                )
            )
        return sorted(found, key=lambda i: (i.site, i.not_before))

    def revoked(self) -> list[x509.RevokedCertificate]:
        """The CRL's entries; none while there is no CRL (a CA the brushtail_pki role made
        gets its first at the first revocation)."""
        path = self.directory / CA_CRL
        if not path.exists():
            return []
        return list(load_crl(path, self.certificate))

    def sign_crl(
        self, revoked: list[x509.RevokedCertificate], number: int, now: datetime
    ) -> x509.CertificateRevocationList:
        # OpenSSL refuses every peer once the CRL is past its next update: make that the
        # CA's own end, and let a revocation be the only reason to re-sign.
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - BACKDATE)
            .next_update(self.certificate.not_valid_after)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        for entry in revoked:
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.key, hashes.SHA256())

    def revoke(self, target: str, now: datetime) -> list[Issued]:
        """Revoke the certificates of site `target` (or the one whose serial, in hex, it
        is) not revoked yet, and re-sign the CRL; what was revoked."""
        chosen = [
            i for i in self.issued() if i.revoked is None and (target in (i.site, f"{i.serial:x}"))
        ]
        if not chosen:
            raise PkiError(f"no certificate of {target!r} is issued and not revoked")
        entries = self.revoked()
        for issued in chosen:
            entries.append(
                x509.RevokedCertificateBuilder()
                .serial_number(issued.serial)
                .revocation_date(now)
                .build()
            )
        number = 1
        if (self.directory / CA_CRL).exists():
            crl = load_crl(self.directory / CA_CRL, self.certificate)
            number += crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        _replace(self.directory / CA_CRL, _pem(self.sign_crl(entries, number, now)))
        return chosen


def create_ca(directory: Path, common_name: str, days: int, now: datetime) -> Ca:
    """A new CA in `directory` (created 0700 if missing): key, certificate, empty CRL."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (CA_KEY, CA_CERT, CA_CRL):
        if (directory / name).exists():
            raise PkiError(f"{directory / name}: already exists; not overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(directory / CA_KEY, _key_pem(key), 0o600)
    _write_new(directory / CA_CERT, _pem(certificate), 0o644)
    ca = Ca(directory, certificate, key)
    _write_new(directory / CA_CRL, _pem(ca.sign_crl([], 1, now)), 0o644)
    return ca


# -- what the daemon checks ------------------------------------------------------------------


def certificate_site(certificate: x509.Certificate) -> str | None:
    """The site a certificate names: its CN, if a SAN dNSName says the same; else None
    (a certificate whose two names disagree names no site)."""
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common) != 1 or not isinstance(common[0].value, str):
        return None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    names = san.value.get_values_for_type(x509.DNSName)
    return common[0].value if common[0].value in names else None


def load_crl(path: Path, ca: x509.Certificate) -> x509.CertificateRevocationList:
    """The CRL at `path`, checked to be signed by `ca`; PkiError otherwise."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except OSError as exc:
        raise PkiError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise PkiError(f"{path}: not a PEM certificate revocation list") from None
    public = ca.public_key()
    if crl.issuer != ca.subject or not isinstance(public, ec.EllipticCurvePublicKey):
        raise PkiError(f"{path}: not issued by the CA")
    if not crl.is_signature_valid(public):
        raise PkiError(f"{path}: its signature does not verify with the CA's key")
    return crl


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PkiError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise PkiError(f"{path}: not a PEM certificate") from None


def _signed_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    public = ca.public_key()
    if certificate.issuer != ca.subject or not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    hash_algorithm = certificate.signature_hash_algorithm
    if hash_algorithm is None:
        return False
    try:
        public.verify(
            certificate.signature,
            certificate.tbs_certificate_bytes,
            ec.ECDSA(hash_algorithm),
        )
    except InvalidSignature:
        return False
    return True


def check_site_files(
    site: str, ca: Path, certificate: Path, key: Path, crl: Path | None, now: datetime
) -> list[tuple[str, str]]:
    """What is wrong with a site's files, as (which file: `ca`, `certificate`, `key`,
    `crl`; why) pairs; empty when the daemon can use them."""
    problems: list[tuple[str, str]] = []
    loaded: dict[str, x509.Certificate] = {}
    for name, path in (("ca", ca), ("certificate", certificate)):
        try:
            loaded[name] = _load_certificate(path)
        except PkiError as exc:
            problems.append((name, str(exc)))
    try:
        mode = os.stat(key).st_mode
    except OSError as exc:
        problems.append(("key", f"{key}: {exc.strerror}"))
    else:
        if not stat.S_ISREG(mode):
            problems.append(("key", f"{key}: not a regular file"))
        elif mode & PRIVATE:
            problems.append(
                (
                    "key",
                    f"{key}: mode {stat.S_IMODE(mode):04o} gives group or others access to "
                    "the private key; chmod 600 it",
                )
            )
        else:
            problems += _check_key(key, loaded.get("certificate"))
    if "ca" in loaded and crl is not None:
        try:
            load_crl(crl, loaded["ca"])
        except PkiError as exc:
            problems.append(("crl", str(exc)))
    if "ca" in loaded and "certificate" in loaded:
        problems += _check_certificate(site, certificate, loaded["certificate"], loaded["ca"], now)
    return problems


def _public_bytes(key: ec.EllipticCurvePublicKey | x509.Certificate) -> bytes:
    # cryptography 38 public keys have no equality of their own: compare their encodings.
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_key(path: Path, certificate: x509.Certificate | None) -> list[tuple[str, str]]:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        return [("key", f"{path}: {exc.strerror}")]
    except (ValueError, TypeError):
        return [("key", f"{path}: not an unencrypted PEM private key")]
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return [("key", f"{path}: not an ECDSA P-256 key (DTLS 1.2 needs one)")]
    if certificate is not None and _public_bytes(certificate) != _public_bytes(key.public_key()):
        return [("key", f"{path}: not the key of the certificate")]
    return []


def _check_certificate(
    site: str, path: Path, certificate: x509.Certificate, ca: x509.Certificate, now: datetime
) -> list[tuple[str, str]]:
    if not _signed_by(certificate, ca):
        return [("certificate", f"{path}: not issued by the CA")]
    named = certificate_site(certificate)
    if named != site:
        return [
            (
                "certificate",
                f"{path}: names {named!r} (CN and SAN), not this site {site!r}"
                if named is not None
                else f"{path}: its CN and SAN dNSName do not name one site",
            )
        ]
    if not certificate.not_valid_before <= now < certificate.not_valid_after:
        return [
            (
                "certificate",
                f"{path}: valid only from {certificate.not_valid_before:%Y-%m-%d %H:%M} "
                f"to {certificate.not_valid_after:%Y-%m-%d %H:%M} UTC",
            )
        ]
    return []
