//! Password files both ways with the real Mosquitto: files `mosquitto_passwd` writes verify
//! with our code, and files `surgemq passwd` writes are accepted by a real `mosquitto` broker.
//! Missing tools skip these tests, or fail them with `SURGEMQ_REQUIRE_INTEROP=1`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    ChildGuard, SURGEMQ, free_port, require_tools, run_bounded, wait_for_port, write_file,
};
use surgemq_broker::passwd::{PasswordFile, PasswordHash};

const BOUND: Duration = Duration::from_secs(20);

#[test]
fn files_written_by_mosquitto_passwd_verify_with_our_code() {
    let Some([mosquitto_passwd]) = require_tools(
        "files_written_by_mosquitto_passwd_verify_with_our_code",
        ["mosquitto_passwd"],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let file_arg = file.to_str().unwrap();
    for args in [
        vec!["-c", "-b", file_arg, "alice", "correct horse"],
        // Legacy `$6$` (Mosquitto 1.x's only format).
        vec!["-H", "sha512", "-b", file_arg, "bob", "hunter2"],
        vec!["-b", file_arg, "carol", "pa:ss$word ü"],
    ] {
        let output = run_bounded(Command::new(&mosquitto_passwd).args(&args), BOUND);
        assert!(
            output.status.success(),
            "mosquitto_passwd {args:?}: {output:?}"
        );
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(text.contains("bob:$6$"), "{text}");

    let passwords = PasswordFile::load(&file).unwrap();
    assert_eq!(passwords.len(), 3);
    assert!(passwords.verify("alice", b"correct horse"));
    assert!(!passwords.verify("alice", b"correct horse "));
    assert!(passwords.verify("bob", b"hunter2"));
    assert!(!passwords.verify("bob", b"hunter3"));
    assert!(passwords.verify("carol", "pa:ss$word ü".as_bytes()));
    assert!(!passwords.verify("dave", b"correct horse"));

    // Deleting with mosquitto_passwd leaves a file we still read.
    let output = run_bounded(
        Command::new(&mosquitto_passwd).args(["-D", file_arg, "bob"]),
        BOUND,
    );
    assert!(output.status.success());
    let passwords = PasswordFile::load(&file).unwrap();
    assert!(passwords.get("bob").is_none());
    assert!(passwords.verify("alice", b"correct horse"));
}

fn surgemq_passwd(args: &[&str]) {
    let output = run_bounded(Command::new(SURGEMQ).arg("passwd").args(args), BOUND);
    assert!(
        output.status.success(),
        "surgemq passwd {args:?}: {output:?}"
    );
}

#[test]
fn files_written_by_surgemq_passwd_are_accepted_by_mosquitto() {
    let test = "files_written_by_surgemq_passwd_are_accepted_by_mosquitto";
    let Some([mosquitto, mosquitto_pub]) = require_tools(test, ["mosquitto", "mosquitto_pub"])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let file_arg = file.to_str().unwrap();
    surgemq_passwd(&["-c", "-b", file_arg, "alice", "s3cret"]);
    surgemq_passwd(&["-b", file_arg, "bob", "first"]);
    surgemq_passwd(&["-b", file_arg, "bob", "second"]);
    surgemq_passwd(&["-b", file_arg, "carol", "gone"]);
    surgemq_passwd(&["-D", file_arg, "carol"]);

    // The format Mosquitto 2 writes: `$7$101$` + base64 of a 12-byte salt and a 64-byte hash.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, user) in lines.iter().zip(["alice", "bob"]) {
        let hash = line.strip_prefix(&format!("{user}:")).unwrap();
        let fields: Vec<&str> = hash.split('$').collect();
        assert_eq!(fields[..3], ["", "7", "101"], "{line}");
        assert_eq!(fields[3].len(), 16, "12 bytes of salt in base64: {line}");
        assert_eq!(fields[4].len(), 88, "64 bytes of hash in base64: {line}");
        assert!(PasswordHash::parse(hash).is_ok());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
    }

    let port = free_port();
    let config = write_file(
        dir.path(),
        "mosquitto.conf",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {file_arg}\n\
             # Running as root, Mosquitto would switch to user `mosquitto`, who cannot read the file.\n\
             user root\npersistence false\n"
        ),
    );
    let mut broker = ChildGuard::spawn(Command::new(&mosquitto).arg("-c").arg(&config));
    wait_for_port(port, &mut broker);

    let publish = |user: &str, password: &str| {
        let output = run_bounded(
            Command::new(&mosquitto_pub).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                user,
                "-P",
                password,
                "-t",
                "interop/test",
                "-m",
                "hello",
                "-q",
                "1",
            ]),
            BOUND,
        );
        output.status.success()
    };
    assert!(publish("alice", "s3cret"), "{}", broker.stderr_text());
    assert!(publish("bob", "second"));
    assert!(!publish("alice", "wrong"));
    assert!(!publish("bob", "first"), "the old password still works");
    assert!(!publish("carol", "gone"), "a deleted user still works");
    assert!(publish("alice", "s3cret"), "the broker is still up");
}
