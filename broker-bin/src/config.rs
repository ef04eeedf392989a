//! The TOML config file ([`FileConfig`], every key documented in `surgemq.example.toml`) and
//! what it turns into: [`Settings`], runtime-independent — the broker's `BrokerConfig`, the
//! listeners with their TLS configs, and the authenticator.
//!
//! Every table rejects unknown keys, and every error names the key it is about: toml's own
//! errors quote the offending line; checks done here start with the key's path.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use surgemq_core::broker::{AuthMode, Authenticator, BrokerConfig, OverflowPolicy};

use crate::duration::ConfigDuration;
use crate::passwd::{PasswordAuthenticator, PasswordFile};
use crate::store::{Mode, PersistenceSettings};
use crate::tls::{self, TlsConfig};

/// The port `surgemq` listens on without a config file or `-p`.
pub const DEFAULT_PORT: u16 = 1883;

/// The config file as written. Every key is optional; a missing one keeps the core's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[[listener]]` tables; none means 127.0.0.1:1883, plain TCP.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Clients without a user name may connect (from anywhere).
    pub allow_anonymous: Option<bool>,
    /// A Mosquitto-format password file (relative paths start at the config file's folder).
    pub password_file: Option<PathBuf>,
    /// `BrokerConfig::max_packet_size`.
    pub max_packet_size: Option<u32>,
    /// `BrokerConfig::max_client_id_len`.
    pub max_client_id_len: Option<usize>,
    /// `BrokerConfig::connect_timeout`.
    pub connect_timeout: Option<ConfigDuration>,
    /// `BrokerConfig::max_keep_alive`, whole seconds; 0 or "off" for no cap.
    pub max_keep_alive: Option<ConfigDuration>,
    /// `BrokerConfig::max_inflight`.
    pub max_inflight: Option<u16>,
    /// `BrokerConfig::max_queued_messages`.
    pub max_queued_messages: Option<usize>,
    /// `BrokerConfig::max_queued_bytes`.
    pub max_queued_bytes: Option<usize>,
    /// `BrokerConfig::overflow_policy`.
    pub overflow_policy: Option<OverflowPolicyName>,
    /// `BrokerConfig::publisher_flow_control`.
    pub publisher_flow_control: Option<bool>,
    /// `BrokerConfig::max_ack_hold`.
    pub max_ack_hold: Option<ConfigDuration>,
    /// `BrokerConfig::queue_qos0_offline`.
    pub queue_qos0_offline: Option<bool>,
    /// `BrokerConfig::session_expiry`; 0 or "off" keeps offline sessions forever.
    pub session_expiry: Option<ConfigDuration>,
    /// `BrokerConfig::max_unflushed_bytes`.
    pub max_unflushed_bytes: Option<usize>,
    /// `BrokerConfig::max_subscriptions_per_client`.
    pub max_subscriptions_per_client: Option<usize>,
    /// `BrokerConfig::max_retained_messages`.
    pub max_retained_messages: Option<usize>,
    /// `BrokerConfig::retry_interval`; 0 or "off" resends only on reconnect.
    pub retry_interval: Option<ConfigDuration>,
    /// `BrokerConfig::sys_interval`; 0 or "off" turns `$SYS` off.
    pub sys_interval: Option<ConfigDuration>,
    /// `[persistence]`: where and how sessions and retained messages are kept.
    pub persistence: Option<PersistenceConfig>,
}

/// The `[persistence]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    /// `"durable"` (default), `"periodic"` or `"memory"`.
    pub mode: Option<Mode>,
    /// Directory of the store file (relative paths start at the config file's folder;
    /// default `surgemq-data` in the working directory).
    pub data_dir: Option<PathBuf>,
    /// `periodic` mode's commit interval (default 1 s).
    pub interval: Option<ConfigDuration>,
}

/// One `[[listener]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `IP:port` to bind, e.g. `"127.0.0.1:1883"` or `"[::]:8883"`.
    pub bind: SocketAddr,
    /// TLS for this listener; absent for plain TCP.
    pub tls: Option<TlsConfig>,
}

/// `overflow_policy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicyName {
    /// `"drop_oldest_qos0_first"`.
    DropOldestQos0First,
    /// `"drop_new"`.
    DropNew,
}

/// A config problem, naming the file and the key.
#[derive(Debug)]
pub struct ConfigError(String);

impl ConfigError {
    fn key(key: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Self(format!("{key}: {reason}"))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl FileConfig {
    /// Parses config text (keys and types only; [`Settings::build`] checks values and files).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string().trim_end().to_owned()))
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }
}

/// One listener, ready for any runtime adapter.
#[derive(Clone)]
pub struct ListenerSettings {
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS server config, `None` for plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Client certificate common name becomes the user name.
    pub identity_as_username: bool,
}

impl fmt::Debug for ListenerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerSettings")
            .field("bind", &self.bind)
            .field("tls", &self.tls.is_some())
            .field("identity_as_username", &self.identity_as_username)
            .finish()
    }
}

/// Everything the broker needs to start, whatever the runtime.
pub struct Settings {
    /// The core's configuration.
    pub broker: BrokerConfig,
    /// Where to listen, in order.
    pub listeners: Vec<ListenerSettings>,
    /// Checks credentials when `broker.auth` is `External`.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// One line for the log: who may connect.
    pub auth_summary: String,
    /// Persistence (its mode is also in `broker.persistence`).
    pub persistence: PersistenceSettings,
}

impl Settings {
    /// Builds settings from a parsed file. Relative paths start at `base_dir` (the config
    /// file's folder). `port` (from `-p`) replaces the file's listeners with one plain listener
    /// on 127.0.0.1.
    pub fn build(
        file: FileConfig,
        base_dir: &Path,
        port: Option<u16>,
    ) -> Result<Self, ConfigError> {
        let broker = broker_config(&file)?;
        let listeners = match port {
            Some(port) => vec![plain_loopback(port)],
            None if file.listeners.is_empty() => vec![plain_loopback(DEFAULT_PORT)],
            None => file
                .listeners
                .iter()
                .enumerate()
                .map(|(index, listener)| listener_settings(index, listener, base_dir))
                .collect::<Result<_, _>>()?,
        };
        let (auth, authenticator, auth_summary) = auth(&file, base_dir)?;
        let persistence = persistence(file.persistence.as_ref(), base_dir)?;
        Ok(Self {
            broker: BrokerConfig {
                auth,
                persistence: persistence.core_mode(),
                ..broker
            },
            listeners,
            authenticator,
            auth_summary,
            persistence,
        })
    }

    /// Settings for `surgemq` without a config file: 127.0.0.1 (`port` or 1883), anonymous
    /// clients from loopback only.
    pub fn defaults(port: Option<u16>) -> Self {
        Self::build(FileConfig::default(), Path::new("."), port)
            .expect("the default config is valid")
    }
}

fn persistence(
    config: Option<&PersistenceConfig>,
    base_dir: &Path,
) -> Result<PersistenceSettings, ConfigError> {
    let mut settings = PersistenceSettings::default();
    let Some(config) = config else {
        return Ok(settings);
    };
    if let Some(mode) = config.mode {
        settings.mode = mode;
    }
    if let Some(dir) = &config.data_dir {
        settings.data_dir = base_dir.join(dir);
    }
    if let Some(interval) = config.interval {
        settings.interval = interval
            .non_zero()
            .ok_or_else(|| ConfigError::key("persistence.interval", "must be more than 0"))?;
        if settings.mode != Mode::Periodic {
            return Err(ConfigError::key(
                "persistence.interval",
                "applies to mode = \"periodic\" only",
            ));
        }
    }
    Ok(settings)
}

fn plain_loopback(port: u16) -> ListenerSettings {
    ListenerSettings {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: None,
        identity_as_username: false,
    }
}

fn listener_settings(
    index: usize,
    listener: &ListenerConfig,
    base_dir: &Path,
) -> Result<ListenerSettings, ConfigError> {
    let key = format!("listener[{index}] (bind = \"{}\")", listener.bind);
    let (tls, identity_as_username) = match &listener.tls {
        None => (None, false),
        Some(config) => {
            let server_config =
                tls::server_config(config, base_dir).map_err(|(field, reason)| {
                    ConfigError::key(format!("{key}: tls.{field}"), reason)
                })?;
            (Some(server_config), config.use_identity_as_username)
        }
    };
    Ok(ListenerSettings {
        bind: listener.bind,
        tls,
        identity_as_username,
    })
}

fn broker_config(file: &FileConfig) -> Result<BrokerConfig, ConfigError> {
    let mut config = BrokerConfig::default();
    if let Some(value) = file.max_packet_size {
        // Smaller than a CONNECT with a short client id cannot work at all.
        at_least("max_packet_size", value as usize, 16)?;
        config.max_packet_size = value;
    }
    if let Some(value) = file.max_client_id_len {
        // The specs require servers to accept 1 to 23 characters [MQTT-3.1.3-5].
        at_least("max_client_id_len", value, 23)?;
        config.max_client_id_len = value;
    }
    if let Some(value) = file.connect_timeout {
        config.connect_timeout = value
            .non_zero()
            .ok_or_else(|| ConfigError::key("connect_timeout", "must be more than 0"))?;
    }
    if let Some(value) = file.max_keep_alive {
        config.max_keep_alive = match value.non_zero() {
            None => None,
            Some(duration) => Some(keep_alive_seconds(duration)?),
        };
    }
    if let Some(value) = file.max_inflight {
        at_least("max_inflight", usize::from(value), 1)?;
        config.max_inflight = value;
    }
    if let Some(value) = file.max_queued_messages {
        config.max_queued_messages = value;
    }
    if let Some(value) = file.max_queued_bytes {
        config.max_queued_bytes = value;
    }
    if let Some(value) = file.overflow_policy {
        config.overflow_policy = match value {
            OverflowPolicyName::DropOldestQos0First => OverflowPolicy::DropOldestQoS0First,
            OverflowPolicyName::DropNew => OverflowPolicy::DropNew,
        };
    }
    if let Some(value) = file.publisher_flow_control {
        config.publisher_flow_control = value;
    }
    if let Some(value) = file.max_ack_hold {
        config.max_ack_hold = value
            .non_zero()
            .ok_or_else(|| ConfigError::key("max_ack_hold", "must be more than 0"))?;
    }
    if let Some(value) = file.queue_qos0_offline {
        config.queue_qos0_offline = value;
    }
    if let Some(value) = file.session_expiry {
        config.session_expiry = value.non_zero();
    }
    if let Some(value) = file.max_unflushed_bytes {
        at_least("max_unflushed_bytes", value, 1)?;
        config.max_unflushed_bytes = value;
    }
    if let Some(value) = file.max_subscriptions_per_client {
        config.max_subscriptions_per_client = value;
    }
    if let Some(value) = file.max_retained_messages {
        config.max_retained_messages = value;
    }
    if let Some(value) = file.retry_interval {
        config.retry_interval = value.non_zero();
    }
    if let Some(value) = file.sys_interval {
        config.sys_interval = value.non_zero();
    }
    Ok(config)
}

fn at_least(key: &str, value: usize, minimum: usize) -> Result<(), ConfigError> {
    if value < minimum {
        return Err(ConfigError::key(
            key,
            format!("must be at least {minimum} (got {value})"),
        ));
    }
    Ok(())
}

fn keep_alive_seconds(duration: Duration) -> Result<u16, ConfigError> {
    if duration.subsec_nanos() != 0 {
        return Err(ConfigError::key(
            "max_keep_alive",
            "must be whole seconds (MQTT keep alive has 1 s resolution)",
        ));
    }
    u16::try_from(duration.as_secs()).map_err(|_| {
        ConfigError::key(
            "max_keep_alive",
            "must be at most 65535 seconds (18h12m15s)",
        )
    })
}

type AuthParts = (AuthMode, Option<Arc<dyn Authenticator>>, String);

fn auth(file: &FileConfig, base_dir: &Path) -> Result<AuthParts, ConfigError> {
    match (&file.password_file, file.allow_anonymous) {
        (Some(path), allow_anonymous) => {
            let path = base_dir.join(path);
            let passwords =
                PasswordFile::load(&path).map_err(|e| ConfigError::key("password_file", e))?;
            let allow_anonymous = allow_anonymous.unwrap_or(false);
            let summary = format!(
                "password file {} ({} users); anonymous clients {}",
                path.display(),
                passwords.len(),
                if allow_anonymous {
                    "allowed"
                } else {
                    "refused"
                }
            );
            let authenticator = PasswordAuthenticator::new(passwords, allow_anonymous);
            Ok((AuthMode::External, Some(Arc::new(authenticator)), summary))
        }
        (None, Some(true)) => Ok((
            AuthMode::AllowAll,
            None,
            "every client allowed (allow_anonymous = true, no password_file)".into(),
        )),
        (None, Some(false)) => Err(ConfigError::key(
            "allow_anonymous",
            "false without a password_file would refuse every client: set password_file, or \
             remove allow_anonymous for the default (anonymous clients from loopback only)",
        )),
        (None, None) => Ok((
            AuthMode::LoopbackOnly,
            None,
            "anonymous clients from loopback only (the default: no password_file, \
             allow_anonymous unset)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_reaches_the_broker_config() {
        let file = FileConfig::parse(
            r#"
            allow_anonymous = true
            max_packet_size = 1000
            max_client_id_len = 64
            connect_timeout = "5s"
            max_keep_alive = 120
            max_inflight = 7
            max_queued_messages = 50
            max_queued_bytes = 4096
            overflow_policy = "drop_new"
            publisher_flow_control = false
            max_ack_hold = "2s"
            queue_qos0_offline = true
            session_expiry = "7d"
            max_unflushed_bytes = 2048
            max_subscriptions_per_client = 9
            max_retained_messages = 11
            retry_interval = "20s"
            sys_interval = "off"
            "#,
        )
        .unwrap();
        let settings = Settings::build(file, Path::new("."), None).unwrap();
        let c = settings.broker;
        assert_eq!(c.max_packet_size, 1000);
        assert_eq!(c.max_client_id_len, 64);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.max_keep_alive, Some(120));
        assert_eq!(c.max_inflight, 7);
        assert_eq!(c.max_queued_messages, 50);
        assert_eq!(c.max_queued_bytes, 4096);
        assert_eq!(c.overflow_policy, OverflowPolicy::DropNew);
        assert!(!c.publisher_flow_control);
        assert_eq!(c.max_ack_hold, Duration::from_secs(2));
        assert!(c.queue_qos0_offline);
        assert_eq!(c.session_expiry, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(c.max_unflushed_bytes, 2048);
        assert_eq!(c.max_subscriptions_per_client, 9);
        assert_eq!(c.max_retained_messages, 11);
        assert_eq!(c.retry_interval, Some(Duration::from_secs(20)));
        assert_eq!(c.sys_interval, None);
        assert_eq!(c.auth, AuthMode::AllowAll);
    }

    #[test]
    fn persistence_table_and_its_defaults() {
        let settings = Settings::defaults(None);
        assert_eq!(settings.persistence.mode, Mode::Durable);
        assert_eq!(settings.persistence.data_dir, PathBuf::from("surgemq-data"));
        assert_eq!(
            settings.broker.persistence,
            surgemq_core::broker::Persistence::Durable
        );
        let file = FileConfig::parse(
            "[persistence]\nmode = \"periodic\"\ndata_dir = \"state\"\ninterval = \"250ms\"\n",
        )
        .unwrap();
        let settings = Settings::build(file, Path::new("/etc/surgemq"), None).unwrap();
        assert_eq!(settings.persistence.mode, Mode::Periodic);
        assert_eq!(
            settings.persistence.data_dir,
            PathBuf::from("/etc/surgemq/state")
        );
        assert_eq!(settings.persistence.interval, Duration::from_millis(250));
        let file = FileConfig::parse("[persistence]\nmode = \"memory\"\n").unwrap();
        let settings = Settings::build(file, Path::new("."), None).unwrap();
        assert_eq!(
            settings.broker.persistence,
            surgemq_core::broker::Persistence::Off
        );
        for (text, key) in [
            (
                "[persistence]\ninterval = 0\nmode = \"periodic\"",
                "persistence.interval",
            ),
            ("[persistence]\ninterval = 1", "persistence.interval"),
        ] {
            let file = FileConfig::parse(text).unwrap();
            let error = Settings::build(file, Path::new("."), None).err().unwrap();
            assert!(error.to_string().starts_with(key), "{text}: {error}");
        }
        let error = FileConfig::parse("[persistence]\nmode = \"disk\"").unwrap_err();
        assert!(error.to_string().contains("durable"), "{error}");
    }

    #[test]
    fn no_file_means_loopback_only_on_1883() {
        let settings = Settings::defaults(None);
        assert_eq!(settings.broker.auth, AuthMode::LoopbackOnly);
        assert_eq!(
            settings.broker,
            BrokerConfig {
                persistence: surgemq_core::broker::Persistence::Durable,
                ..BrokerConfig::default()
            }
        );
        assert_eq!(settings.listeners.len(), 1);
        assert_eq!(
            settings.listeners[0].bind,
            "127.0.0.1:1883".parse().unwrap()
        );
        assert!(settings.authenticator.is_none());
    }

    #[test]
    fn port_option_replaces_the_files_listeners() {
        let file = FileConfig::parse("[[listener]]\nbind = \"0.0.0.0:1999\"\n").unwrap();
        let settings = Settings::build(file, Path::new("."), Some(18883)).unwrap();
        assert_eq!(settings.listeners.len(), 1);
        assert_eq!(
            settings.listeners[0].bind,
            "127.0.0.1:18883".parse().unwrap()
        );
    }

    #[test]
    fn value_checks_name_their_key() {
        for (text, key) in [
            ("connect_timeout = 0", "connect_timeout"),
            ("max_keep_alive = 70000", "max_keep_alive"),
            ("max_keep_alive = \"1.5s\"", "max_keep_alive"),
            ("max_inflight = 0", "max_inflight"),
            ("max_client_id_len = 5", "max_client_id_len"),
            ("allow_anonymous = false", "allow_anonymous"),
            (
                "password_file = \"/nonexistent/surgemq-pw\"",
                "password_file",
            ),
        ] {
            let file = FileConfig::parse(text).unwrap();
            let error = Settings::build(file, Path::new("."), None).err().unwrap();
            assert!(error.to_string().starts_with(key), "{text}: {error}");
        }
    }
}
