//! The `pub` / `sub` connection flags turned into what a client needs: the broker's address, the
//! core [`ClientConfig`] and, with `--cafile`, a rustls configuration (ring provider, the given
//! CAs, an optional client certificate). Runtime-independent: every runtime's client takes
//! these.
//!
//! Never: connect, or decide anything about the protocol beyond what the flags say.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use surgemq_core::client::ClientConfig;
use surgemq_core::codec::{Properties, Property};
use surgemq_core::string::MqttString;

use crate::app::Failure;
use crate::cli::{ConnectArgs, Version};

/// Everything needed to open one client connection.
#[derive(Clone)]
pub struct Connection {
    /// `host:port` (an IPv6 address in brackets).
    pub address: String,
    /// The MQTT configuration: identity, version, session, keep alive; never reconnects, so
    /// a failed first connection is reported instead of retried.
    pub config: ClientConfig,
    /// TLS: the rustls configuration and the name the server certificate must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.address)
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// `host:port`, bracketing a bare IPv6 address.
pub fn address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Builds the connection for `args`; `role` (`pub`, `sub`) names the default client id.
pub fn connection(args: &ConnectArgs, role: &str) -> Result<Connection, Failure> {
    let tls = match &args.cafile {
        Some(cafile) => Some(tls_config(args, cafile)?),
        None => None,
    };
    let port = args.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 });
    let client_id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("surgemq-{role}-{}", std::process::id()));
    let client_id = MqttString::new(&client_id)
        .map_err(|e| Failure::failed(format!("invalid client id: {e}")))?;
    let mut config = ClientConfig::new(client_id);
    config.version = args.version.into();
    config.clean_start = !args.persistent;
    config.keep_alive = args.keepalive;
    config.reconnect = None;
    if let Some(username) = &args.username {
        config.username = Some(
            MqttString::new(username)
                .map_err(|e| Failure::failed(format!("invalid user name: {e}")))?,
        );
    }
    config.password = args
        .password
        .as_ref()
        .map(|password| Bytes::from(password.clone().into_bytes()));
    // mosquitto_sub -c on 5.0 asks for a session that never expires; 3.x has no expiry.
    if args.session_expiry.is_some() && args.version != Version::V5 {
        return Err(Failure::failed("-x (session expiry) needs -V mqttv5"));
    }
    let v5_persistent = args.persistent && args.version == Version::V5;
    let expiry = args
        .session_expiry
        .or(if v5_persistent { Some(u32::MAX) } else { None });
    if let Some(expiry) = expiry.filter(|&e| e != 0) {
        config.connect_properties = Properties::new().with(Property::SessionExpiryInterval(expiry));
    }
    Ok(Connection {
        address: address(&args.host, port),
        config,
        tls,
    })
}

/// The rustls client configuration for `--cafile` (and `--cert` / `--key`).
fn tls_config(
    args: &ConnectArgs,
    cafile: &Path,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), Failure> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(cafile)? {
        roots
            .add(cert)
            .map_err(|e| Failure::failed(format!("{}: {e}", cafile.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::failed(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Failure::failed(format!("no private key read from {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Failure::failed(format!("--key does not fit --cert: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = args.tls_server_name.as_deref().unwrap_or(&args.host);
    let name = ServerName::try_from(name.trim_matches(['[', ']']).to_owned())
        .map_err(|e| Failure::failed(format!("`{name}` is not a TLS server name: {e}")))?;
    Ok((Arc::new(config), name))
}

/// Every certificate of a PEM file; none is an error.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Failure::failed(format!("cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Failure::failed(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}
