//! `pub` and `sub` over TLS (`--cafile`, `--cert`, `--key`) through Mosquitto and our `surgemq`
//! broker, with certificates made by the test (rcgen): server-only TLS, and a listener that
//! requires a client certificate.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Background, Broker, CLIENT, Watch, free_port, require_tool, run};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Writes `ca.pem`, `server.pem` / `server.key` (for 127.0.0.1 and localhost) and
/// `client.pem` / `client.key` into `dir`.
fn make_certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "surgemq-client test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, sans, purpose) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// Brokers with two TLS listeners: server-only on the first port, client certificate
/// required on the second.
fn tls_brokers(test: &str, dir: &Path) -> Vec<(Broker, u16)> {
    let mut brokers = Vec::new();
    if let Some(mosquitto) = require_tool(test, "mosquitto") {
        let (plain, mutual) = (free_port(), free_port());
        let config = dir.join("mosquitto.conf");
        let files = |extra: &str| {
            format!(
                "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n{extra}",
                dir.display()
            )
        };
        std::fs::write(
            &config,
            format!(
                "per_listener_settings false\nallow_anonymous true\n\
                 listener {plain} 127.0.0.1\n{}\
                 listener {mutual} 127.0.0.1\n{}",
                files(""),
                files("require_certificate true\n")
            ),
        )
        .unwrap();
        let broker = Broker::custom(
            "mosquitto",
            Command::new(mosquitto).arg("-c").arg(&config),
            plain,
        );
        brokers.push((broker, mutual));
    }
    if let Some(surgemq) = common::surgemq_binary(test) {
        let (plain, mutual) = (free_port(), free_port());
        let config = dir.join("surgemq.toml");
        std::fs::write(
            &config,
            format!(
                "allow_anonymous = true\n\n\
                 [[listener]]\nbind = \"127.0.0.1:{plain}\"\n\
                 tls = {{ cert = \"server.pem\", key = \"server.key\" }}\n\n\
                 [[listener]]\nbind = \"127.0.0.1:{mutual}\"\n\
                 tls = {{ cert = \"server.pem\", key = \"server.key\", ca = \"ca.pem\", \
                 require_client_cert = true }}\n"
            ),
        )
        .unwrap();
        let broker = Broker::custom(
            "surgemq",
            Command::new(surgemq).arg("-c").arg(&config).args([
                "--log-level",
                "warn",
                "--persistence",
                "memory",
            ]),
            plain,
        );
        brokers.push((broker, mutual));
    }
    brokers
}

#[test]
fn pub_sub_round_trip_over_tls_with_and_without_client_certificates() {
    let test = "pub_sub_round_trip_over_tls_with_and_without_client_certificates";
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let client = |port: u16, args: &[&str]| {
        let mut command = Command::new(CLIENT);
        command.current_dir(dir.path()).args(args).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--cafile",
            "ca.pem",
        ]);
        command
    };
    let with_cert = ["--cert", "client.pem", "--key", "client.key"];
    for (broker, mutual) in tls_brokers(test, dir.path()) {
        for (port, extra) in [(broker.port, &[][..]), (mutual, &with_cert[..])] {
            let mut sub = Background::start(
                client(
                    port,
                    &["sub", "-d", "-t", "tls/#", "-q", "1", "-C", "1", "-W", "20"],
                )
                .args(extra),
                Watch::Stderr,
            );
            sub.wait_for("received SUBACK", Duration::from_secs(10));
            let done = run(
                client(port, &["pub", "-t", "tls/x", "-q", "1", "-m", "secret"]).args(extra),
                None,
            );
            assert_eq!(done.code(), 0, "{} pub on {port}: {done:?}", broker.name);
            let done = sub.finish();
            assert_eq!(done.code(), 0, "{} sub on {port}: {done:?}", broker.name);
            assert_eq!(done.stdout, "secret\n", "{}: {done:?}", broker.name);
        }
        let done = run(
            &mut client(mutual, &["pub", "-t", "tls/x", "-m", "x", "-W", "3"]),
            None,
        );
        assert_ne!(
            done.code(),
            0,
            "{}: a client without a certificate got in: {done:?}",
            broker.name
        );
    }
}
