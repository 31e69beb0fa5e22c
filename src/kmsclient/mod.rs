//! Clients for the external roots of trust that can protect a volume's
//! key-encryption key (KEK): a PKCS#11 token ([`pkcs11`]) and an
//! OpenBao/Vault Transit key ([`transit`]).
//!
//! Owns: talking to those systems (loading a PKCS#11 module, HTTP to a
//! Transit server), turning their failures into errors that say what to do
//! next, and reading the small secrets they need (a PIN, a token) from a
//! file or an environment variable ([`SecretSource`]).
//!
//! Must never: see a volume, read or write files other than the secret
//! files it is pointed at, log or put into an error a PIN, a token or key
//! bytes, or implement cryptography itself (the token or the server does the
//! sealing; this layer only frames the bytes).

pub mod pkcs11;
pub mod transit;

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

/// Where a small secret (a PKCS#11 PIN, an OpenBao token, an AppRole
/// secret_id) comes from. `Debug` never shows a literal value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The first line of a file (one trailing `\n` or `\r\n` is dropped).
    File(PathBuf),
    /// The value of an environment variable.
    Env(String),
    /// A literal value, e.g. `pin-value=` in a `pkcs11:` URI.
    Value(Zeroizing<String>),
}

/// Why a [`SecretSource`] could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    /// The file could not be read.
    #[error("cannot read the secret file {path}: {source}; check the path and its permissions")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The environment variable is unset or not UTF-8.
    #[error("the environment variable {0} is not set (or not UTF-8); export it or use a file")]
    Env(String),
    /// The secret is empty.
    #[error("the secret from {0} is empty; put the secret there")]
    Empty(String),
    /// The file holds more than one line, or is not UTF-8.
    #[error("the secret file {0} must hold one line of UTF-8 text")]
    Malformed(PathBuf),
}

impl SecretSource {
    /// Reads the secret. A file's content is its first and only line (one
    /// trailing newline allowed); an environment variable is taken as is.
    pub fn resolve(&self) -> Result<Zeroizing<String>, SecretSourceError> {
        let value = match self {
            SecretSource::File(path) => {
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| {
                    SecretSourceError::File {
                        path: path.clone(),
                        source,
                    }
                })?);
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| SecretSourceError::Malformed(path.clone()))?;
                let line = text
                    .strip_suffix("\r\n")
                    .or_else(|| text.strip_suffix('\n'))
                    .unwrap_or(text);
                if line.contains('\n') {
                    return Err(SecretSourceError::Malformed(path.clone()));
                }
                Zeroizing::new(line.to_owned())
            }
            SecretSource::Env(name) => Zeroizing::new(
                std::env::var(name).map_err(|_| SecretSourceError::Env(name.clone()))?,
            ),
            SecretSource::Value(v) => v.clone(),
        };
        if value.is_empty() {
            return Err(SecretSourceError::Empty(self.to_string()));
        }
        Ok(value)
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(n) => write!(f, "environment variable {n}"),
            SecretSource::Value(_) => f.write_str("a literal value"),
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
            SecretSource::Env(n) => f.debug_tuple("Env").field(n).finish(),
            SecretSource::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_source_takes_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(&*SecretSource::File(p.clone()).resolve().unwrap(), "1234");
        std::fs::write(&p, "1234\r\n").unwrap();
        assert_eq!(&*SecretSource::File(p.clone()).resolve().unwrap(), "1234");
        std::fs::write(&p, "12\n34\n").unwrap();
        assert!(matches!(
            SecretSource::File(p.clone()).resolve(),
            Err(SecretSourceError::Malformed(_))
        ));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            SecretSource::File(p.clone()).resolve(),
            Err(SecretSourceError::Empty(_))
        ));
        let missing = SecretSource::File(dir.path().join("nope")).resolve();
        assert!(matches!(missing, Err(SecretSourceError::File { .. })));
    }

    #[test]
    fn env_source_and_redaction() {
        let name = "SEALFS_KMSCLIENT_TEST_SECRET_UNSET_VAR";
        assert!(matches!(
            SecretSource::Env(name.into()).resolve(),
            Err(SecretSourceError::Env(_))
        ));
        let v = SecretSource::Value(Zeroizing::new("hunter2".into()));
        assert!(!format!("{v:?} {v}").contains("hunter2"));
        assert_eq!(&*v.resolve().unwrap(), "hunter2");
    }
}
