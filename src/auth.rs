//! The bearer token that guards wconfd's TCP port (`--auth-token-file`),
//! and the rules for the file that holds it: the daemon and its clients
//! (`wconf::client`, `wconfctl --token-file`) read it the same way.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The largest token file read; a token is a few dozen bytes.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// A token: printable ASCII without spaces, so it travels unchanged in an
/// `Authorization` header. Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

/// Reads a token file. Refused, with the reason: a file that is group- or
/// world-accessible (anyone who can read it can act as any client, and
/// anyone who can write it can choose the token), one that is empty, or
/// one whose content is not a single token. Surrounding whitespace (the
/// newline `echo` leaves) is not part of the token.
pub fn read_token_file(path: &Path) -> Result<Token, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("token file {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("token file {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "token file {shown} is accessible by group or others (mode {:04o}); \
             make it owner-only: chmod 600 {shown}",
            mode & 0o7777
        ));
    }
    let mut text = String::new();
    file.take(TOKEN_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("token file {shown}: {e}"))?;
    if text.len() as u64 > TOKEN_FILE_BYTES_MAX {
        return Err(format!(
            "token file {shown} is larger than {TOKEN_FILE_BYTES_MAX} bytes"
        ));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {shown} is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "token file {shown} must hold one token of printable ASCII without spaces"
        ));
    }
    Ok(Token(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn token_files_must_be_owner_only_non_empty_and_one_token() {
        // Invariant: only an owner-only file holding one printable token is
        // accepted, and each refusal says why.
        let ok = token_file("s3cret-token\n", 0o600);
        assert_eq!(read_token_file(ok.path()).unwrap().as_str(), "s3cret-token");
        let cases = [
            (
                "s3cret\n",
                0o640,
                "accessible by group or others (mode 0640)",
            ),
            ("s3cret\n", 0o604, "accessible by group or others"),
            ("s3cret\n", 0o620, "accessible by group or others"),
            ("\n  \n", 0o600, "is empty"),
            ("two words\n", 0o600, "one token"),
        ];
        for (text, mode, why) in cases {
            let f = token_file(text, mode);
            let err = read_token_file(f.path()).unwrap_err();
            assert!(err.contains(why), "{text:?} {mode:o}: {err}");
        }
        let token = read_token_file(ok.path()).unwrap();
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
