//! TLS for the gRPC listener and for calls between services: certificates and keys read from
//! PEM files, with errors that name the file and what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The files `rollcall serve` reads for TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), also presented as the client certificate when a
    /// service calls another.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// The CA (PEM) whose client certificates identify rollcall's own services.
    pub client_ca: Option<PathBuf>,
    /// The CA (PEM) trusted when calling the other services; without it, the public web
    /// authorities are trusted.
    pub ca: Option<PathBuf>,
}

/// TLS settings read and checked from [`TlsFiles`].
#[derive(Debug, Clone)]
pub struct Tls {
    identity: Option<Identity>,
    /// The certificate chain and key of `identity`, as read, for the listener's acceptor.
    server_pem: Option<(Pem, Pem)>,
    client_ca: Option<Certificate>,
    client_ca_pem: Option<Pem>,
    ca: Option<Certificate>,
}

/// The contents of a PEM file, which may be a private key, so its `Debug` shows only the size.
#[derive(Clone)]
struct Pem(Vec<u8>);

impl std::fmt::Debug for Pem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Pem({} bytes)", self.0.len())
    }
}

impl TlsFiles {
    /// Reads and checks the files. Fails, naming the file, when one is missing, unreadable or
    /// not PEM, or when a certificate comes without its key.
    pub fn load(&self) -> anyhow::Result<Tls> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read_pem(cert, "--tls-cert", "CERTIFICATE")?;
                let key_pem = read_pem(key, "--tls-key", "PRIVATE KEY")?;
                Some((cert_pem, key_pem))
            }
            (None, None) => None,
            (Some(_), None) => anyhow::bail!(
                "--tls-cert is given without --tls-key: give the private key of the \
                 certificate too (or ROLLCALL_TLS_KEY)"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--tls-key is given without --tls-cert: give the certificate too (or \
                 ROLLCALL_TLS_CERT)"
            ),
        };
        let client_ca_pem = match &self.client_ca {
            Some(path) => {
                if identity.is_none() {
                    anyhow::bail!(
                        "--tls-client-ca needs --tls-cert and --tls-key: services present client \
                         certificates only over TLS"
                    );
                }
                Some(read_pem(path, "--tls-client-ca", "CERTIFICATE")?)
            }
            None => None,
        };
        let ca = match &self.ca {
            Some(path) => Some(Certificate::from_pem(read_pem(
                path,
                "--tls-ca",
                "CERTIFICATE",
            )?)),
            None => None,
        };
        Ok(Tls {
            identity: identity
                .as_ref()
                .map(|(cert, key)| Identity::from_pem(cert, key)),
            server_pem: identity.map(|(cert, key)| (Pem(cert), Pem(key))),
            client_ca: client_ca_pem.as_ref().map(Certificate::from_pem),
            client_ca_pem: client_ca_pem.map(Pem),
            ca,
        })
    }
}

impl Tls {
    /// True when the listener serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// True when client certificates signed by the services' CA are accepted as the identity of
    /// another rollcall service.
    pub fn accepts_service_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Returns the acceptor of the listener's TLS connections, if it serves TLS. Clients without
    /// a certificate are still accepted: people and MIS systems prove who they are with bearer
    /// tokens.
    ///
    /// # Errors
    ///
    /// Fails when the certificate or key cannot be parsed, or the key does not belong to the
    /// certificate.
    pub fn acceptor(&self) -> anyhow::Result<Option<TlsAcceptor>> {
        let Some((cert_pem, key_pem)) = &self.server_pem else {
            return Ok(None);
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem.0)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| anyhow::anyhow!("invalid certificate in --tls-cert: {error}"))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem.0)
            .map_err(|error| anyhow::anyhow!("invalid private key in --tls-key: {error}"))?;
        // The workspace builds rustls with the ring provider alone, which `builder` picks.
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for certificate in CertificateDer::pem_slice_iter(&pem.0) {
                    let certificate = certificate.map_err(|error| {
                        anyhow::anyhow!("invalid certificate in --tls-client-ca: {error}")
                    })?;
                    roots.add(certificate).map_err(|error| {
                        anyhow::anyhow!("unusable CA certificate in --tls-client-ca: {error}")
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .allow_unauthenticated()
                    .build()
                    .map_err(|error| {
                        anyhow::anyhow!("cannot check client certificates: {error}")
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }

    /// Returns the TLS settings for calling another service at an `https://` address: the configured
    /// CA (or the public web authorities), presenting this server's certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config.with_webpki_roots(),
        };
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        config
    }
}

/// Returns the TLS settings a client command uses for an `https://` server: the CA in `ca_file`, or
/// the public web authorities.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<ClientTlsConfig> {
    Ok(match ca_file {
        Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(
            path,
            "--tls-ca",
            "CERTIFICATE",
        )?)),
        None => ClientTlsConfig::new().with_webpki_roots(),
    })
}

/// Reads a PEM file and checks that it holds a block whose label ends with `label`.
fn read_pem(path: &Path, option: &str, label: &str) -> anyhow::Result<Vec<u8>> {
    let contents = std::fs::read(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot read {option} file {}: {error}; check the path and that rollcall may read it",
            path.display()
        )
    })?;
    let text = String::from_utf8_lossy(&contents);
    let holds_label = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if !holds_label {
        anyhow::bail!(
            "{option} file {} contains no PEM block of type {label}: give the {}",
            path.display(),
            if label == "CERTIFICATE" {
                "certificate in PEM form (it starts with -----BEGIN CERTIFICATE-----)"
            } else {
                "private key in PEM form (it starts with -----BEGIN PRIVATE KEY-----, \
                 -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"
            }
        );
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_key_without_certificate_is_rejected() {
        let files = TlsFiles {
            key: Some(PathBuf::from("server.key")),
            ..TlsFiles::default()
        };
        let error = files.load().expect_err("a key alone");
        assert!(error.to_string().contains("--tls-cert"), "{error}");
    }

    #[test]
    fn tls_file_not_pem_is_named() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let cert = dir.path().join("server.crt");
        std::fs::write(&cert, "not a certificate").expect("write");
        let files = TlsFiles {
            cert: Some(cert.clone()),
            key: Some(cert.clone()),
            ..TlsFiles::default()
        };
        let error = files.load().expect_err("not PEM").to_string();
        assert!(error.contains("server.crt"), "{error}");
        assert!(error.contains("BEGIN CERTIFICATE"), "{error}");
    }

    #[test]
    fn tls_missing_ca_file_is_named() {
        let files = TlsFiles {
            ca: Some(PathBuf::from("/nonexistent/ca.crt")),
            ..TlsFiles::default()
        };
        let error = files.load().expect_err("missing").to_string();
        assert!(error.contains("--tls-ca"), "{error}");
        assert!(error.contains("/nonexistent/ca.crt"), "{error}");
    }

    #[test]
    fn no_files_means_no_tls() {
        let tls = TlsFiles::default().load().expect("no files");
        assert!(!tls.serves_tls());
        assert!(!tls.accepts_service_certificates());
        assert!(tls.acceptor().expect("no TLS").is_none());
    }
}
