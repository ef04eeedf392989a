//! `surgemq passwd`: adds, updates and deletes users of a Mosquitto-format password file,
//! keeping every other line (comments included) as it was. The file is replaced atomically
//! (written beside it, then renamed) and new files are readable by their owner only.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use crate::cli::PasswdArgs;
use crate::passwd::{PasswordHash, split_line};

/// Runs the subcommand; the error is the message for the user.
pub fn run(args: &PasswdArgs) -> Result<(), String> {
    check_user_name(&args.user)?;
    let existing = if args.create {
        String::new()
    } else {
        fs::read_to_string(&args.file)
            .map_err(|e| format!("cannot read {}: {e} (-c creates it)", args.file.display()))?
    };
    let updated = if args.delete {
        let (text, found) = without_user(&existing, &args.user);
        if !found {
            eprintln!(
                "warning: user {:?} not found in {}",
                args.user,
                args.file.display()
            );
            return Ok(());
        }
        text
    } else {
        let password = match &args.password {
            Some(password) => password.clone(),
            None => prompt_password()?,
        };
        if password.is_empty() {
            return Err("empty password".into());
        }
        let hash = PasswordHash::create(password.as_bytes(), args.iterations)
            .map_err(|e| format!("no random salt: {e}"))?;
        with_user(&existing, &args.user, &hash)
    };
    write_atomically(&args.file, &updated)
        .map_err(|e| format!("cannot write {}: {e}", args.file.display()))
}

fn check_user_name(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if user.contains(':') {
        return Err("a user name must not contain ':'".into());
    }
    if user.chars().any(char::is_control) {
        return Err("a user name must not contain control characters".into());
    }
    if user.starts_with('#') {
        return Err("a user name must not start with '#' (comment lines do)".into());
    }
    if user.len() > usize::from(u16::MAX) {
        return Err("a user name is at most 65535 bytes".into());
    }
    Ok(())
}

fn prompt_password() -> Result<String, String> {
    let no_terminal = |e: std::io::Error| {
        format!("cannot ask for a password ({e}); in scripts use -b FILE USER PASSWORD")
    };
    let first = rpassword::prompt_password("Password: ").map_err(no_terminal)?;
    let second = rpassword::prompt_password("Reenter password: ").map_err(no_terminal)?;
    if first != second {
        return Err("passwords do not match".into());
    }
    Ok(first)
}

/// `text` with `user`'s line replaced by `user:hash` (appended if absent).
pub fn with_user(text: &str, user: &str, hash: &PasswordHash) -> String {
    let new_line = format!("{user}:{hash}");
    let mut out = String::with_capacity(text.len() + new_line.len() + 1);
    let mut replaced = false;
    for line in text.lines() {
        if split_line(line).is_some_and(|(name, _)| name == user) {
            if !replaced {
                out.push_str(&new_line);
                out.push('\n');
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&new_line);
        out.push('\n');
    }
    out
}

/// `text` without `user`'s lines, and whether there were any.
pub fn without_user(text: &str, user: &str) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in text.lines() {
        if split_line(line).is_some_and(|(name, _)| name == user) {
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, found)
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let mut temp_name = file_name.to_os_string();
    temp_name.push(format!(".tmp{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        file.write_all(text.as_bytes())?;
        // An existing file keeps its permissions (a broker running as another user may
        // need to read it).
        if let Ok(metadata) = fs::metadata(path) {
            file.set_permissions(metadata.permissions())?;
        }
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_replaces_only_that_users_line_and_keeps_comments() {
        let hash = PasswordHash::pbkdf2_with_salt(b"pw", vec![7; 12], 101);
        let text = "# users\nalice:$6$x$y\nbob:$6$x$y\n";
        let updated = with_user(text, "alice", &hash);
        assert_eq!(updated, format!("# users\nalice:{hash}\nbob:$6$x$y\n"));
        let added = with_user(text, "carol", &hash);
        assert!(added.ends_with(&format!("bob:$6$x$y\ncarol:{hash}\n")));
    }

    #[test]
    fn delete_removes_the_user_and_reports_absence() {
        let (text, found) = without_user("alice:a\nbob:b\n", "alice");
        assert_eq!((text.as_str(), found), ("bob:b\n", true));
        assert!(!without_user("bob:b\n", "alice").1);
    }

    #[test]
    fn user_names_that_would_break_the_file_are_refused() {
        for bad in ["", "a:b", "a\nb", "#admin"] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_user_name("alice@example").is_ok());
    }
}
