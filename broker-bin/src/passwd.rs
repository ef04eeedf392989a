//! Mosquitto-compatible password files: the [`PasswordHash`] of one user, the [`PasswordFile`]
//! of many, and the [`PasswordAuthenticator`] the broker asks on every CONNECT.
//!
//! Format (as `mosquitto_passwd` writes it, one user a line, `#` starts a comment line):
//!
//! ```text
//! alice:$7$101$<base64 salt>$<base64 hash>     PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt
//! bob:$6$<base64 salt>$<base64 hash>           legacy (Mosquitto 1.x): SHA-512(password ‖ salt)
//! ```
//!
//! Base64 is the standard alphabet with padding; hashes are 64 bytes. Mosquitto creates 12-byte
//! salts and also reads 64-byte ones, so both are accepted here. Hashes are compared in constant
//! time, and an unknown user costs the same hash computation as a known one, so neither timing
//! nor the CONNACK tells which user names exist. Never: plain-text passwords.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;
use surgemq_core::broker::{AuthRequest, AuthVerdict, Authenticator};
use surgemq_core::codec::ConnectReason;

/// Iterations `mosquitto_passwd` uses for `$7$` hashes (Mosquitto 2.0's `PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt length `mosquitto_passwd` creates, in bytes.
pub const SALT_LEN: usize = 12;
/// Length of every hash in the file (SHA-512 output), in bytes.
pub const HASH_LEN: usize = 64;

/// One user's stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 (Mosquitto 2's default).
    Pbkdf2Sha512 {
        /// PBKDF2 iteration count.
        iterations: u32,
        /// Salt (12 or 64 bytes).
        salt: Vec<u8>,
        /// Derived key.
        hash: [u8; HASH_LEN],
    },
    /// `$6$<salt>$<hash>`: SHA-512 of the password followed by the salt (Mosquitto 1.x).
    Sha512 {
        /// Salt (12 or 64 bytes).
        salt: Vec<u8>,
        /// Digest.
        hash: [u8; HASH_LEN],
    },
}

/// Why a hash string is not in Mosquitto's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashFormatError(&'static str);

impl fmt::Display for HashFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for HashFormatError {}

impl PasswordHash {
    /// A `$7$` hash of `password` with a fresh random salt, as `mosquitto_passwd` makes it.
    pub fn create(password: &[u8], iterations: u32) -> Result<Self, getrandom::Error> {
        let mut salt = vec![0; SALT_LEN];
        getrandom::fill(&mut salt)?;
        Ok(Self::pbkdf2_with_salt(password, salt, iterations))
    }

    /// A `$7$` hash with the given salt (for tests and reproducible output).
    pub fn pbkdf2_with_salt(password: &[u8], salt: Vec<u8>, iterations: u32) -> Self {
        let hash = pbkdf2_sha512(password, &salt, iterations);
        Self::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        }
    }

    /// Parses the part after `user:`.
    pub fn parse(text: &str) -> Result<Self, HashFormatError> {
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut fields = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(HashFormatError(
                    "expected $7$<iterations>$<base64 salt>$<base64 hash>",
                ));
            };
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or(HashFormatError("iteration count is not a positive integer"))?;
            Ok(Self::Pbkdf2Sha512 {
                iterations,
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else if let Some(rest) = text.strip_prefix("$6$") {
            let mut fields = rest.split('$');
            let (Some(salt), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(HashFormatError("expected $6$<base64 salt>$<base64 hash>"));
            };
            Ok(Self::Sha512 {
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else if text.starts_with('$') {
            Err(HashFormatError(
                "unsupported hash type (supported: $7$ sha512-pbkdf2, $6$ sha512)",
            ))
        } else {
            Err(HashFormatError(
                "not a password hash (plain-text passwords are not accepted; use `surgemq passwd`)",
            ))
        }
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let (expected, computed) = match self {
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => (hash, pbkdf2_sha512(password, salt, *iterations)),
            Self::Sha512 { salt, hash } => (hash, sha512_salted(password, salt)),
        };
        bool::from(expected.ct_eq(&computed))
    }
}

/// The file form: `$7$101$salt$hash` or `$6$salt$hash`.
impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            Self::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
        }
    }
}

/// Hashes stay out of logs.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pbkdf2Sha512 { iterations, .. } => {
                write!(
                    f,
                    "PasswordHash::Pbkdf2Sha512 {{ iterations: {iterations}, .. }}"
                )
            }
            Self::Sha512 { .. } => f.write_str("PasswordHash::Sha512 { .. }"),
        }
    }
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

fn sha512_salted(password: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    let mut digest = Sha512::new();
    digest.update(password);
    digest.update(salt);
    digest.finalize().into()
}

fn decode_salt(text: &str) -> Result<Vec<u8>, HashFormatError> {
    let salt = STANDARD
        .decode(text)
        .map_err(|_| HashFormatError("salt is not valid base64"))?;
    if salt.len() == SALT_LEN || salt.len() == HASH_LEN {
        Ok(salt)
    } else {
        Err(HashFormatError("salt is not 12 or 64 bytes long"))
    }
}

fn decode_hash(text: &str) -> Result<[u8; HASH_LEN], HashFormatError> {
    let hash = STANDARD
        .decode(text)
        .map_err(|_| HashFormatError("hash is not valid base64"))?;
    hash.try_into()
        .map_err(|_| HashFormatError("hash is not 64 bytes long"))
}

/// A line of a password file that is not `user:hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PasswordFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for PasswordFileError {}

/// Splits a password file line into user and hash text; `None` for blank and comment lines.
/// Shared by the reader and `surgemq passwd`, so both agree on which line is whose.
pub fn split_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.starts_with('#') {
        return None;
    }
    Some(line.split_once(':').unwrap_or((line, "")))
}

/// Every user of a password file and their hash.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    /// Parses a whole file. Any line that is not blank, a `#` comment or `user:hash` is an
    /// error naming its line: a half-read credentials file is worse than none.
    pub fn parse(text: &str) -> Result<Self, PasswordFileError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let Some((user, hash)) = split_line(line) else {
                continue;
            };
            let fail = |reason: String| PasswordFileError {
                line: number,
                reason,
            };
            if user.is_empty() {
                return Err(fail("empty user name".into()));
            }
            if hash.is_empty() {
                return Err(fail(format!("no password hash for user {user:?}")));
            }
            let hash = PasswordHash::parse(hash.trim_end())
                .map_err(|e| fail(format!("user {user:?}: {e}")))?;
            if let Some(first) = first_line.insert(user.to_owned(), number) {
                return Err(fail(format!(
                    "user {user:?} appears twice (first on line {first})"
                )));
            }
            users.insert(user.to_owned(), hash);
        }
        Ok(Self { users })
    }

    /// Reads and parses a file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The stored hash of `user`.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    /// Whether `user` exists and `password` is theirs. An unknown user costs one default
    /// hash computation too, so response time does not reveal which users exist.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                let _ = pbkdf2_sha512(password, &[0; SALT_LEN], DEFAULT_ITERATIONS);
                false
            }
        }
    }
}

/// The broker's [`Authenticator`] for a password file (Mosquitto's `password_file` with
/// `allow_anonymous`).
#[derive(Debug)]
pub struct PasswordAuthenticator {
    file: PasswordFile,
    allow_anonymous: bool,
}

impl PasswordAuthenticator {
    /// Checks clients against `file`; clients without a user name get in only if
    /// `allow_anonymous`.
    pub fn new(file: PasswordFile, allow_anonymous: bool) -> Self {
        Self {
            file,
            allow_anonymous,
        }
    }
}

impl Authenticator for PasswordAuthenticator {
    fn authenticate(&self, request: &AuthRequest) -> AuthVerdict {
        let Some(user) = &request.username else {
            return if self.allow_anonymous {
                AuthVerdict::Accept
            } else {
                AuthVerdict::Refuse(ConnectReason::NotAuthorized)
            };
        };
        if request.from_certificate {
            // The TLS handshake verified the client certificate that named this user.
            return AuthVerdict::Accept;
        }
        // As in Mosquitto, a client that names a user must prove it, whatever
        // `allow_anonymous` says; a missing password never matches.
        let verified = match &request.password {
            Some(password) => self.file.verify(user.as_str(), password),
            None => {
                let _ = self.file.verify(user.as_str(), b"");
                false
            }
        };
        if verified {
            AuthVerdict::Accept
        } else {
            tracing::info!(conn = request.conn.get(), user = %user, "bad user name or password");
            AuthVerdict::Refuse(ConnectReason::BadUserNameOrPassword)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `mosquitto_passwd -c -b file alice secret` (Mosquitto 2.0.11).
    const MOSQUITTO_PBKDF2: &str = "$7$101$LobXoKqbVQU6gfLC$xYUU19oHtFsaCQ06kAjdhvmmUDbcfkHtKQ9FVw6EihrEjcQimoHPbOO1NAfW+uR1pCEFD6Zqf9EAPxSl6GCiNA==";
    /// Written by `mosquitto_passwd -H sha512 -c -b file bob hunter2`.
    const MOSQUITTO_SHA512: &str = "$6$1TQbDXdJ1sbq4EUN$WKmUFnQx1KgHepsHc5vNpO0UZW2iquDgA3EQBs9fSXOdrk7KEClxSlYI2LtIFS47GGDrKhUKeBOpTQrWJVWMvA==";

    #[test]
    fn mosquitto_pbkdf2_hash_verifies_only_the_right_password() {
        let hash = PasswordHash::parse(MOSQUITTO_PBKDF2).unwrap();
        assert!(hash.verify(b"secret"));
        assert!(!hash.verify(b"Secret"));
        assert!(!hash.verify(b""));
    }

    #[test]
    fn mosquitto_legacy_sha512_hash_verifies_only_the_right_password() {
        let hash = PasswordHash::parse(MOSQUITTO_SHA512).unwrap();
        assert!(hash.verify(b"hunter2"));
        assert!(!hash.verify(b"hunter3"));
    }

    #[test]
    fn hashes_print_back_exactly_as_read() {
        for text in [MOSQUITTO_PBKDF2, MOSQUITTO_SHA512] {
            assert_eq!(PasswordHash::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn created_hash_has_mosquitto_shape_and_verifies() {
        let hash = PasswordHash::create(b"pw", DEFAULT_ITERATIONS).unwrap();
        let text = hash.to_string();
        let fields: Vec<&str> = text.split('$').collect();
        assert_eq!(fields[..3], ["", "7", "101"]);
        assert_eq!(STANDARD.decode(fields[3]).unwrap().len(), SALT_LEN);
        assert_eq!(STANDARD.decode(fields[4]).unwrap().len(), HASH_LEN);
        assert!(PasswordHash::parse(&text).unwrap().verify(b"pw"));
    }

    #[test]
    fn malformed_hashes_are_refused_with_a_reason() {
        for bad in [
            "secret",
            "$5$abc$def",
            "$7$0$LobXoKqbVQU6gfLC$xYUU",
            "$7$101$LobXoKqbVQU6gfLC",
            "$7$101$!!!$xYUU",
            "$6$LobXoKqbVQU6gfLC$AAAA",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_skips_comments_and_blank_lines_and_names_bad_lines() {
        let text = format!("# users\n\nalice:{MOSQUITTO_PBKDF2}\r\nbob:{MOSQUITTO_SHA512}\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"secret"));
        assert!(file.verify("bob", b"hunter2"));
        assert!(!file.verify("carol", b"secret"));

        let error = PasswordFile::parse(&format!("alice:{MOSQUITTO_PBKDF2}\nbob:plain\n"));
        assert_eq!(error.unwrap_err().line, 2);
        let error = PasswordFile::parse(&format!("a:{MOSQUITTO_PBKDF2}\na:{MOSQUITTO_PBKDF2}"));
        assert!(error.unwrap_err().reason.contains("twice"));
    }
}
