//! TLS for a listener: the rustls server configuration, built once per listener (and
//! again on SIGHUP), and the client identity read from a verified certificate.
//!
//! rustls with the `ring` provider, TLS 1.2 and 1.3 only. Certificates, keys (PKCS#8,
//! PKCS#1, SEC1) and CRLs are PEM, read through `rustls-pki-types`.

use crate::config::ListenerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS listener {bind}: {what} not set")]
    Missing { bind: String, what: &'static str },
    #[error("cannot read {what} from {}: {why}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("{what} in {}: no PEM blocks found", path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("TLS configuration for {bind}: {why}")]
    Rustls { bind: String, why: String },
}

fn pem_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        what,
        path: path.to_owned(),
        why: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds the server configuration for a `kind = "tls"` listener.
pub fn server_config(l: &ListenerConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let bind = l.bind.to_string();
    let cert_file = l.cert_file.as_deref().ok_or_else(|| TlsError::Missing {
        bind: bind.clone(),
        what: "cert_file",
    })?;
    let key_file = l.key_file.as_deref().ok_or_else(|| TlsError::Missing {
        bind: bind.clone(),
        what: "key_file",
    })?;
    let certs = pem_certs(cert_file, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Pem {
        what: "private key",
        path: key_file.to_owned(),
        why: e.to_string(),
    })?;
    let rustls_err = |e: rustls::Error| TlsError::Rustls {
        bind: bind.clone(),
        why: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(rustls_err)?;
    let builder = match &l.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in pem_certs(ca_file, "client CA bundle")? {
                roots.add(ca).map_err(rustls_err)?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl_file) = &l.crl_file {
                let pem_err = |e: rustls::pki_types::pem::Error| TlsError::Pem {
                    what: "CRL",
                    path: crl_file.clone(),
                    why: e.to_string(),
                };
                let crls = CertificateRevocationListDer::pem_file_iter(crl_file)
                    .map_err(pem_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(pem_err)?;
                verifier = verifier.with_crls(crls);
            }
            if !l.require_client_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| TlsError::Rustls {
                bind: bind.clone(),
                why: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(rustls_err)?;
    Ok(Arc::new(config))
}

/// The identity of a verified client certificate: its subject CN, or else its first
/// DNS subject alternative name.
pub fn certificate_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}
