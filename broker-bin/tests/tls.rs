//! TLS listeners from the config file, end to end with `mosquitto_pub`: server-only TLS, and
//! client certificates required (with the certificate's common name as user name). The
//! certificates are made by the test (rcgen). Missing tools skip these tests, or fail them
//! with `SURGEMQ_REQUIRE_INTEROP=1`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::{
    ChildGuard, SURGEMQ, free_ports, require_tools, run_bounded, wait_for_port, write_file,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const BOUND: Duration = Duration::from_secs(20);

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(chunk).unwrap());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// Writes `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1) and `client.pem`/`client.key`
/// (common name `alice`) into `dir`.
fn make_certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "SurgeMQ test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    write_file(dir, "ca.pem", &pem("CERTIFICATE", ca.der()));

    for (name, sans, purpose, common_name) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        ),
        (
            "client",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            "alice",
        ),
    ] {
        let mut params = CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        write_file(dir, &format!("{name}.pem"), &pem("CERTIFICATE", cert.der()));
        write_file(
            dir,
            &format!("{name}.key"),
            &pem("PRIVATE KEY", &key.serialize_der()),
        );
    }
}

#[test]
fn tls_listeners_serve_mosquitto_pub_with_and_without_client_certificates() {
    let test = "tls_listeners_serve_mosquitto_pub_with_and_without_client_certificates";
    let Some([mosquitto_pub]) = require_tools(test, ["mosquitto_pub"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let [server_only, mutual] = free_ports();
    let config = write_file(
        dir.path(),
        "surgemq.toml",
        &format!(
            "allow_anonymous = true\n\n\
             [[listener]]\nbind = \"127.0.0.1:{server_only}\"\n\
             tls = {{ cert = \"server.pem\", key = \"server.key\" }}\n\n\
             [[listener]]\nbind = \"127.0.0.1:{mutual}\"\n\
             tls = {{ cert = \"server.pem\", key = \"server.key\", ca = \"ca.pem\", \
             require_client_cert = true, use_identity_as_username = true }}\n"
        ),
    );
    let mut broker = ChildGuard::spawn(
        Command::new(SURGEMQ)
            .arg("-c")
            .arg(&config)
            .args(["--persistence", "memory"]),
    );
    wait_for_port(server_only, &mut broker);
    wait_for_port(mutual, &mut broker);

    let publish = |port: u16, extra: &[&str]| {
        let output = run_bounded(
            Command::new(&mosquitto_pub)
                .current_dir(dir.path())
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "--cafile",
                    "ca.pem",
                ])
                .args(["-t", "tls/test", "-m", "x", "-q", "1"])
                .args(extra),
            BOUND,
        );
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let client_cert = ["--cert", "client.pem", "--key", "client.key"];

    let (ok, stderr) = publish(server_only, &[]);
    assert!(ok, "server-only TLS: {stderr}");
    let (ok, _) = publish(mutual, &[]);
    assert!(!ok, "a client without a certificate got in");
    let (ok, stderr) = publish(mutual, &client_cert);
    assert!(ok, "client certificate refused: {stderr}");

    let _ = broker.0.kill();
    let log = broker.stderr_text();
    assert!(
        log.contains(&format!(
            "listening on 127.0.0.1:{server_only} (MQTT over TLS)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "listening on 127.0.0.1:{mutual} (MQTT over TLS, certificate common name as user name)"
        )),
        "{log}"
    );
}

#[test]
fn certificate_users_need_no_password_while_password_users_still_do() {
    let test = "certificate_users_need_no_password_while_password_users_still_do";
    let Some([mosquitto_pub]) = require_tools(test, ["mosquitto_pub"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let passwd = Command::new(SURGEMQ)
        .current_dir(dir.path())
        .args(["passwd", "-c", "-b", "passwd", "alice", "secret"])
        .output()
        .unwrap();
    assert!(passwd.status.success(), "{passwd:?}");
    let [plain, mutual] = free_ports();
    let config = write_file(
        dir.path(),
        "surgemq.toml",
        &format!(
            "password_file = \"passwd\"\n\n\
             [[listener]]\nbind = \"127.0.0.1:{plain}\"\n\n\
             [[listener]]\nbind = \"127.0.0.1:{mutual}\"\n\
             tls = {{ cert = \"server.pem\", key = \"server.key\", ca = \"ca.pem\", \
             require_client_cert = true, use_identity_as_username = true }}\n"
        ),
    );
    let mut broker = ChildGuard::spawn(
        Command::new(SURGEMQ)
            .arg("-c")
            .arg(&config)
            .args(["--persistence", "memory"]),
    );
    wait_for_port(plain, &mut broker);
    wait_for_port(mutual, &mut broker);
    let publish = |port: u16, extra: &[&str]| {
        let output = run_bounded(
            Command::new(&mosquitto_pub)
                .current_dir(dir.path())
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-t", "tls/test", "-m", "x", "-q", "1"])
                .args(extra),
            BOUND,
        );
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The verified certificate names the user: no password needed.
    let (ok, stderr) = publish(
        mutual,
        &[
            "--cafile",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client.key",
        ],
    );
    assert!(ok, "certificate user refused: {stderr}");
    // Without a certificate, the password file still decides.
    let (ok, stderr) = publish(plain, &["-u", "alice", "-P", "secret"]);
    assert!(ok, "password user refused: {stderr}");
    let (ok, _) = publish(plain, &["-u", "alice", "-P", "wrong"]);
    assert!(!ok, "a wrong password got in");
    let (ok, _) = publish(plain, &["-u", "alice"]);
    assert!(!ok, "a user name without a password got in");
}
