//! TLS for the local test servers and for rollcall's own listeners in tests: a throwaway
//! certificate authority and the certificates for 127.0.0.1 and localhost that it signs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A throwaway certificate authority that issues certificates for 127.0.0.1 and localhost,
/// for servers and for the client certificates of mutual TLS.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate a [`TestCa`] issued, with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key, PKCS #8.
    pub key_pem: String,
    der: Vec<u8>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// Creates a CA whose common name is `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("cannot generate the test CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.self_signed(&key)?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            pem: certificate.pem(),
        })
    }

    /// Returns the CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues a certificate for 127.0.0.1, localhost and `extra_names`, with `common_name`,
    /// usable both as a server and as a client certificate.
    pub fn issue(
        &self,
        common_name: &str,
        extra_names: &[&str],
    ) -> anyhow::Result<IssuedCertificate> {
        let key = KeyPair::generate().context("cannot generate a test certificate key")?;
        let mut names: Vec<String> = extra_names.iter().map(|name| (*name).to_owned()).collect();
        names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            der: certificate.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

impl IssuedCertificate {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir` and returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem)
            .with_context(|| format!("cannot write {}", cert.display()))?;
        std::fs::write(&key, &self.key_pem)
            .with_context(|| format!("cannot write {}", key.display()))?;
        Ok((cert, key))
    }
}

/// Issues a throwaway CA and a certificate for 127.0.0.1 and localhost signed by it, and
/// returns the TLS acceptor with the CA's PEM.
pub(crate) fn tls_acceptor(
    ca_name: &str,
    server_name: &str,
) -> anyhow::Result<(TlsAcceptor, String)> {
    let ca = TestCa::new(ca_name)?;
    let server = ca.issue(server_name, &[])?;
    // The workspace builds rustls with the ring provider alone, which `builder` picks.
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server.der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_der)),
        )?;
    Ok((TlsAcceptor::from(Arc::new(config)), ca.pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_authority_is_pem() {
        let (_, pem) = tls_acceptor("test CA", "test server").expect("certificates");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
}
