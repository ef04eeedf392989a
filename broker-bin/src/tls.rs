//! A listener's `tls = { ... }` table ([`TlsConfig`]) and the rustls `ServerConfig` built from
//! its PEM files, with the ring provider (no C toolchain needed) and, given a CA, client
//! certificates checked by webpki.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// A listener's TLS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server certificate, then its chain.
    pub cert: PathBuf,
    /// PEM file: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file: CAs that sign client certificates; enables client certificates.
    pub ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `ca`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// Use the client certificate's common name as the user name (needs
    /// `require_client_cert`), like Mosquitto's `use_identity_as_username`.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

/// A failed TLS setup: the field of the `tls` table at fault and why.
pub type TlsError = (&'static str, String);

/// Builds the rustls server config; relative paths start at `base_dir`.
pub fn server_config(
    config: &TlsConfig,
    base_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    if config.require_client_cert && config.ca.is_none() {
        return Err((
            "require_client_cert",
            "needs tls.ca to check client certificates against".into(),
        ));
    }
    if config.use_identity_as_username && !config.require_client_cert {
        return Err((
            "use_identity_as_username",
            "needs require_client_cert = true (the user name comes from the certificate)".into(),
        ));
    }
    let cert_path = base_dir.join(&config.cert);
    let certs = read_certs(&cert_path).map_err(|e| ("cert", e))?;
    let key_path = base_dir.join(&config.key);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        (
            "key",
            format!("no private key read from {}: {e}", key_path.display()),
        )
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", e.to_string()))?;
    let builder = match &config.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                client_verifier(&base_dir.join(ca), provider, config.require_client_cert)
                    .map_err(|e| ("ca", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("key", format!("does not fit the certificate: {e}")))?;
    Ok(Arc::new(server))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

fn client_verifier(
    ca_path: &Path,
    provider: Arc<CryptoProvider>,
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_path)? {
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate in {}: {e}", ca_path.display()))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| format!("cannot check client certificates: {e}"))
}
