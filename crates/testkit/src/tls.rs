//! TLS for the local test servers: a throwaway certificate authority and a server
//! certificate for 127.0.0.1 and localhost that it signs.

use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Issues a throwaway CA and a certificate for 127.0.0.1 and localhost signed by it, and
/// returns the TLS acceptor with the CA's PEM.
pub(crate) fn tls_acceptor(
    ca_name: &str,
    server_name: &str,
) -> anyhow::Result<(TlsAcceptor, String)> {
    let ca_key = KeyPair::generate().context("cannot generate the test CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca_certificate = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().context("cannot generate the test server key")?;
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, server_name);
    let server_certificate = server_params.signed_by(&server_key, &issuer)?;

    // The workspace builds rustls with the ring provider alone, which `builder` picks.
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_certificate.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )?;
    Ok((TlsAcceptor::from(Arc::new(config)), ca_certificate.pem()))
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
