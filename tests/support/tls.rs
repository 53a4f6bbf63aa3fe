//! Throwaway test PKI, generated at test time with `rcgen`: a CA, a server certificate
//! for `localhost` / `127.0.0.1` and a client certificate signed by it, plus a second,
//! unrelated CA for "a certificate from the wrong CA is refused" tests. All files are PEM
//! (keys in PKCS#8, ECDSA P-256) in a `TempDir` that is removed when the `TestPki` drops.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::TempDir;

/// Common name of the client certificate (what a broker sees with
/// `use_identity_as_username`).
pub const CLIENT_CN: &str = "fieldgate-test-client";

/// A CA, a server and a client certificate with their keys, written as PEM files.
#[derive(Debug)]
pub struct TestPki {
    /// Holds every file below; removed on drop.
    pub dir: TempDir,
    /// `ca.pem`: the CA that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// `server.pem`: SANs DNS `localhost` and IP `127.0.0.1`, EKU serverAuth.
    pub server_cert: PathBuf,
    /// `server.key`: the server certificate's private key.
    pub server_key: PathBuf,
    /// `client.pem`: CN `fieldgate-test-client`, EKU clientAuth.
    pub client_cert: PathBuf,
    /// `client.key`: the client certificate's private key.
    pub client_key: PathBuf,
    /// `other_ca.pem`: a second CA that signed nothing here; trusting only it must fail.
    pub other_ca_cert: PathBuf,
}

impl TestPki {
    /// Generates fresh keys and certificates (a few milliseconds) into a new `TempDir`.
    pub fn generate() -> TestPki {
        let dir = TempDir::new("pki");
        let ca = certificate_authority("fieldgate test CA");
        let other_ca = certificate_authority("fieldgate unrelated test CA");

        let mut server = leaf_params("fieldgate test server", ExtendedKeyUsagePurpose::ServerAuth);
        server.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("valid DNS name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        let server_key = KeyPair::generate().expect("generate server key");
        let server_cert = server
            .signed_by(&server_key, &*ca)
            .expect("sign server certificate");

        let client = leaf_params(CLIENT_CN, ExtendedKeyUsagePurpose::ClientAuth);
        let client_key = KeyPair::generate().expect("generate client key");
        let client_cert = client
            .signed_by(&client_key, &*ca)
            .expect("sign client certificate");

        let write = |name: &str, pem: String| -> PathBuf {
            let path = dir.path().join(name);
            fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };
        TestPki {
            ca_cert: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client_cert.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            other_ca_cert: write("other_ca.pem", other_ca.pem()),
            dir,
        }
    }

    /// The directory holding the PEM files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Subject "O=fieldgate tests, CN=`common_name`".
fn distinguished_name(common_name: &str) -> rcgen::DistinguishedName {
    let mut name = rcgen::DistinguishedName::new();
    name.push(DnType::OrganizationName, "fieldgate tests");
    name.push(DnType::CommonName, common_name);
    name
}

/// A self-signed CA that may sign certificates (and nothing below it may be a CA).
fn certificate_authority(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign CA certificate")
}

/// An end-entity certificate's parameters: subject CN, one extended key usage, and the
/// authority key identifier that OpenSSL uses to find the issuer.
fn leaf_params(common_name: &str, eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params
}
