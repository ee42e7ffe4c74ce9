//! Service identities from client certificates: in distributed mode, rollcall's processes call
//! each other over mutual TLS, and the server's TLS settings accept only client certificates
//! that the services' CA signed.

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::principal::Principal;

/// Returns the service identity of a connection whose client presented a certificate the TLS
/// layer verified, if any. The name is the certificate's first DNS name, else its common name.
pub(crate) fn service_principal<B>(request: &http::Request<B>) -> Option<Principal> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let chain = info.peer_certs()?;
    let leaf = chain.first()?;
    Some(Principal::service_certificate(certificate_name(
        leaf.as_ref(),
    )))
}

/// True when the caller presented a client certificate, which the TLS layer accepts only when
/// the services' CA signed it.
pub(crate) fn has_client_certificate<B>(request: &http::Request<B>) -> bool {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .is_some_and(|chain| !chain.is_empty())
}

/// Returns the peer address of a plain or TLS connection, as text.
pub(crate) fn peer_address<B>(request: &http::Request<B>) -> String {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
        .map(|addr| addr.to_string())
        .unwrap_or_default()
}

/// Names a certificate by its first DNS name, else its common name, else generically (the TLS
/// layer verified the certificate in any case).
fn certificate_name(der: &[u8]) -> String {
    let Ok((_, certificate)) = X509Certificate::from_der(der) else {
        return "service certificate".to_owned();
    };
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        for name in &names.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return format!("service:{dns}");
            }
        }
    }
    certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())
        .map_or_else(
            || "service certificate".to_owned(),
            |name| format!("service:{name}"),
        )
}
