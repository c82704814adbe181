"""brushtaild/replication/pki.py and `brushtail pki`: a CA, site certificates, the CRL, and
the checks the daemon makes on a site's files."""

import os
import shutil
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from brushtaild.cli import main
from brushtaild.replication import pki

NOW = datetime.now(UTC).replace(tzinfo=None)


def site_certificate(directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / pki.SITE_CERT).read_bytes())


def check(directory: Path, site: str = "edge-a", crl: Path | None = None) -> list[tuple[str, str]]:
    return pki.check_site_files(
        site,
        directory / pki.CA_CERT,
        directory / pki.SITE_CERT,
        directory / pki.SITE_KEY,
        crl,
        NOW,
    )


@pytest.fixture
def ca(tmp_path: Path) -> pki.Ca:
    return pki.create_ca(tmp_path / "ca", "test cluster", 30, NOW)


def test_a_site_certificate_names_the_site_for_both_roles(ca: pki.Ca, tmp_path: Path) -> None:
    out = tmp_path / "edge-a"
    ca.issue("edge-a", 10, out, NOW)
    certificate = site_certificate(out)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-a"
    assert pki.certificate_site(certificate) == "edge-a"
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.public_key().curve.name == "secp256r1"
    assert (
        certificate.not_valid_after - certificate.not_valid_before
        == timedelta(days=10) + pki.BACKDATE
    )
    assert os.stat(out / pki.SITE_KEY).st_mode & 0o777 == 0o600
    assert os.stat(ca.directory / pki.CA_KEY).st_mode & 0o777 == 0o600
    assert (out / pki.CA_CERT).read_bytes() == (ca.directory / pki.CA_CERT).read_bytes()
    assert check(out) == []


def test_issue_list_revoke_round_trip(ca: pki.Ca, tmp_path: Path) -> None:
    for site in ("edge-a", "edge-b"):
        ca.issue(site, 10, tmp_path / site, NOW)
    ca.issue("edge-b", 10, tmp_path / "edge-b-new", NOW + timedelta(seconds=1))
    listed = ca.issued()
    assert [(i.site, i.state(NOW)) for i in listed] == [
        ("edge-a", "valid"),
        ("edge-b", "valid"),
        ("edge-b", "valid"),
    ]
    revoked = ca.revoke("edge-b", NOW)
    assert {i.serial for i in revoked} == {i.serial for i in listed if i.site == "edge-b"}
    reloaded = pki.Ca.load(ca.directory)
    assert [i.state(NOW) for i in reloaded.issued()] == ["valid", "revoked", "revoked"]
    crl = pki.load_crl(ca.directory / pki.CA_CRL, ca.certificate)
    assert {r.serial_number for r in crl} == {i.serial for i in revoked}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    # By serial too, and never twice.
    edge_a = listed[0]
    assert [i.serial for i in ca.revoke(f"{edge_a.serial:x}", NOW)] == [edge_a.serial]
    with pytest.raises(pki.PkiError, match="no certificate of 'edge-a'"):
        ca.revoke("edge-a", NOW)
    assert check(tmp_path / "edge-a", crl=ca.directory / pki.CA_CRL) == []


def test_nothing_is_overwritten(ca: pki.Ca, tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="already exists"):
        pki.create_ca(ca.directory, "again", 30, NOW)
    ca.issue("edge-a", 10, tmp_path / "edge-a", NOW)
    before = (tmp_path / "edge-a" / pki.SITE_KEY).read_bytes()
    with pytest.raises(pki.PkiError, match="already exists"):
        ca.issue("edge-a", 10, tmp_path / "edge-a", NOW)
    assert (tmp_path / "edge-a" / pki.SITE_KEY).read_bytes() == before
    assert len(ca.issued()) == 1  # the refused one is not recorded
    with pytest.raises(pki.PkiError, match="site name"):
        ca.issue("Edge_A", 10, tmp_path / "x", NOW)


def test_the_daemon_refuses_each_wrong_file(ca: pki.Ca, tmp_path: Path) -> None:
    out = tmp_path / "edge-a"
    ca.issue("edge-a", 10, out, NOW)
    os.chmod(out / pki.SITE_KEY, 0o640)
    assert check(out) == [
        (
            "key",
            f"{out / pki.SITE_KEY}: mode 0640 gives group or others access to the private "
            "key; chmod 600 it",
        )
    ]
    os.chmod(out / pki.SITE_KEY, 0o400)
    assert check(out) == []
    assert check(out, site="edge-b") == [
        (
            "certificate",
            f"{out / pki.SITE_CERT}: names 'edge-a' (CN and SAN), not this site 'edge-b'",
        )
    ]
    other = pki.create_ca(tmp_path / "other", "test cluster", 30, NOW)
    shutil.copy(other.directory / pki.CA_CERT, out / pki.CA_CERT)
    assert check(out) == [("certificate", f"{out / pki.SITE_CERT}: not issued by the CA")]
    assert check(out, crl=ca.directory / pki.CA_CRL)[0] == (
        "crl",
        f"{ca.directory / pki.CA_CRL}: its signature does not verify with the CA's key",
    )
    ca.issue("edge-a", 10, tmp_path / "second", NOW)
    shutil.copy(tmp_path / "second" / pki.SITE_KEY, out / pki.SITE_KEY)
    shutil.copy(ca.directory / pki.CA_CERT, out / pki.CA_CERT)
    assert check(out) == [("key", f"{out / pki.SITE_KEY}: not the key of the certificate")]
    (out / pki.SITE_KEY).unlink()
    (out / pki.CA_CERT).unlink()
    assert check(out) == [
        ("ca", f"{out / pki.CA_CERT}: No such file or directory"),
        ("key", f"{out / pki.SITE_KEY}: No such file or directory"),
    ]


def test_an_expired_certificate_is_refused(ca: pki.Ca, tmp_path: Path) -> None:
    ca.issue("edge-a", 1, tmp_path / "old", NOW - timedelta(days=3))
    [(key, reason)] = check(tmp_path / "old")
    assert key == "certificate" and "valid only from" in reason


def test_the_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir = str(tmp_path / "ca")
    assert main(["pki", "init", "--ca-dir", ca_dir]) == 0
    assert main(["pki", "issue", "edge-a", "--ca-dir", ca_dir]) == 0
    assert (tmp_path / "ca" / "sites" / "edge-a" / pki.SITE_KEY).exists()
    assert main(["pki", "issue", "edge-a", "--ca-dir", ca_dir]) == 1
    assert "already exists; not overwritten" in capsys.readouterr().err
    assert main(["pki", "revoke", "edge-a", "--ca-dir", ca_dir]) == 0
    capsys.readouterr()
    assert main(["pki", "list", "--ca-dir", ca_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SITE", "SERIAL", "NOT", "AFTER", "(UTC)", "STATE"]
    assert lines[1].split()[0] == "edge-a" and lines[1].split()[-1] == "revoked"
    assert main(["pki", "revoke", "--ca-dir", ca_dir]) == 2
    assert main(["pki", "list", "--ca-dir", str(tmp_path / "none")]) == 1


def ansible_like_ca(directory: Path) -> pki.Ca:
    """What the brushtail_pki role leaves on the controller: a P-384 CA, no CRL."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "brushtail cluster CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir()
    (directory / pki.CA_CERT).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / pki.CA_KEY).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki.Ca.load(directory)


def test_the_ansible_roles_ca_issues_lists_and_gets_a_first_crl(tmp_path: Path) -> None:
    ca = ansible_like_ca(tmp_path / "ca")
    ca.issue("edge-a", 10, tmp_path / "edge-a", NOW)
    assert [i.state(NOW) for i in ca.issued()] == ["valid"]
    assert check(tmp_path / "edge-a") == []
    ca.revoke("edge-a", NOW)
    crl = pki.load_crl(ca.directory / pki.CA_CRL, ca.certificate)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    assert [i.state(NOW) for i in ca.issued()] == ["revoked"]


def test_the_site_is_the_cn_when_a_san_dns_name_repeats_it() -> None:
    key = ec.generate_private_key(ec.SECP256R1())

    def certificate(cn: str, *names: x509.GeneralName) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + timedelta(days=1))
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(key, hashes.SHA256())

    # The role's names: the site, and the gossip address (an IP, or a DNS name).
    site_ip = certificate(
        "edge-a", x509.DNSName("edge-a"), x509.IPAddress(IPv4Address("198.19.0.11"))
    )
    assert pki.certificate_site(site_ip) == "edge-a"
    assert (
        pki.certificate_site(
            certificate("edge-a", x509.DNSName("gw.example.net"), x509.DNSName("edge-a"))
        )
        == "edge-a"
    )
    assert pki.certificate_site(certificate("edge-a", x509.DNSName("edge-b"))) is None
    assert pki.certificate_site(certificate("edge-a")) is None
