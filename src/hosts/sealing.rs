//! Host credentials at rest: each private key or password is sealed with ChaCha20-Poly1305
//! under the control plane's credentials key before it is stored, so the database alone (a
//! backup, a read-only replica, a leaked dump) does not reveal any login.
//!
//! The key is 32 random bytes, hex-encoded: given in `SKYLAUNCH_CREDENTIALS_KEY`, or else
//! generated on first start and kept in `<data-dir>/credentials-key` (mode 0600). Processes
//! sharing one PostgreSQL database must share the key (give it in the environment): a host
//! sealed by another key cannot be opened, and says so.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

/// The version prefix of a sealed value: `v1:` + base64(nonce ‖ ciphertext ‖ tag).
const PREFIX: &str = "v1:";

/// The key that seals and opens host credentials. Its bytes never show in `Debug`.
pub struct CredentialsKey {
    key: LessSafeKey,
    /// Where it came from, for messages ("SKYLAUNCH_CREDENTIALS_KEY" or the file's path).
    pub source: String,
}

impl std::fmt::Debug for CredentialsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialsKey(from {})", self.source)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the stored credentials cannot be opened with this process's credentials key ({source_of_key}): they were sealed with another key, or changed in the database. Give every process the same SKYLAUNCH_CREDENTIALS_KEY, or add the host again with its credentials")]
    WrongKey { source_of_key: String },
}

impl CredentialsKey {
    /// The key from `configured` (64 hex digits) or from the data dir's file, creating that
    /// file on first start.
    pub fn resolve(configured: Option<&str>, data_dir: &Path) -> io::Result<CredentialsKey> {
        if let Some(hex) = configured {
            let bytes = from_hex(hex.trim()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "SKYLAUNCH_CREDENTIALS_KEY must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`",
                )
            })?;
            return Ok(CredentialsKey::from_bytes(
                &bytes,
                "SKYLAUNCH_CREDENTIALS_KEY".into(),
            ));
        }
        let file = data_dir.join("credentials-key");
        match fs::read_to_string(&file) {
            Ok(text) => {
                let mode = fs::metadata(&file)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(file = %file.display(), mode = format!("{mode:o}"), "the credentials key file is readable by others; run chmod 600 on it");
                }
                let bytes = from_hex(text.trim()).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} does not hold 64 hex digits; restore it from a backup (hosts sealed with it cannot be opened otherwise)",
                            file.display()
                        ),
                    )
                })?;
                Ok(CredentialsKey::from_bytes(
                    &bytes,
                    file.display().to_string(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&file)?;
                f.write_all(to_hex(&bytes).as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()?;
                Ok(CredentialsKey::from_bytes(
                    &bytes,
                    file.display().to_string(),
                ))
            }
            Err(e) => Err(e),
        }
    }

    pub fn from_bytes(bytes: &[u8; 32], source: String) -> CredentialsKey {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32 bytes is the key size");
        CredentialsKey {
            key: LessSafeKey::new(key),
            source,
        }
    }

    /// Seals `secret`; `context` (the host's id) is bound to it, so a sealed value copied onto
    /// another host's row does not open.
    pub fn seal(&self, secret: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the system's random source works");
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing a short value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Opens what [`seal`](Self::seal) sealed with the same key and context.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SealError> {
        let wrong = || SealError::WrongKey {
            source_of_key: self.source.clone(),
        };
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(wrong)?;
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| wrong())?;
        String::from_utf8(plain.to_vec()).map_err(|_| wrong())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> CredentialsKey {
        CredentialsKey::from_bytes(&[byte; 32], "test".into())
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_host() {
        let sealed = key(1).seal("hunter2", "host-a");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key(1).open(&sealed, "host-a").unwrap(), "hunter2");
        assert!(key(2).open(&sealed, "host-a").is_err(), "another key");
        assert!(
            key(1).open(&sealed, "host-b").is_err(),
            "another host's row"
        );
        assert!(key(1).open("v1:AAAA", "host-a").is_err(), "truncated");
        assert!(key(1).open("hunter2", "host-a").is_err(), "not sealed");
        assert_ne!(
            key(1).seal("hunter2", "host-a"),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn the_key_file_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = CredentialsKey::resolve(None, dir.path()).unwrap();
        let sealed = first.seal("pw", "h");
        let file = dir.path().join("credentials-key");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = CredentialsKey::resolve(None, dir.path()).unwrap();
        assert_eq!(again.open(&sealed, "h").unwrap(), "pw");
        let hex = fs::read_to_string(&file).unwrap();
        let given = CredentialsKey::resolve(Some(hex.trim()), Path::new("/nonexistent")).unwrap();
        assert_eq!(given.open(&sealed, "h").unwrap(), "pw");
        assert!(CredentialsKey::resolve(Some("short"), dir.path()).is_err());
    }
}
