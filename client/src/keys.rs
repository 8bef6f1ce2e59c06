//! Player keys: generate, save and load ed25519 signing keys.
//!
//! A key file holds the 32-byte secret seed as 64 hex digits and a newline;
//! it is created with mode 0600. The public key is derived from it.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::error::ClientError;
use crate::tx::PlayerKey;

/// A player's signing key.
#[derive(Clone)]
pub struct Keypair {
    key: SigningKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", hex::encode(self.public()))
    }
}

impl Keypair {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// The key whose secret seed is `seed` (for tests and test vectors).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key, as transactions carry it.
    pub fn public(&self) -> PlayerKey {
        self.key.verifying_key().to_bytes()
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Writes the seed to a new file readable only by its owner; refuses to
    /// overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            ClientError::Key(format!("cannot create key file {}: {e}", path.display()))
        })?;
        writeln!(file, "{}", hex::encode(self.key.to_bytes()))
            .map_err(|e| ClientError::Key(format!("cannot write key file {}: {e}", path.display())))
    }

    /// Reads a key file written by [`Keypair::save`].
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Key(format!("cannot read key file {}: {e}", path.display()))
        })?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                ClientError::Key(format!(
                    "{} does not hold a key: expected 64 hex digits",
                    path.display()
                ))
            })?;
        Ok(Self::from_seed(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_key_loads_back_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("player.key");
        let key = Keypair::generate();
        key.save(&path).unwrap();
        assert_eq!(Keypair::load(&path).unwrap().public(), key.public());
        assert!(Keypair::generate().save(&path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(dir.path().join("bad.key"), "not hex").unwrap();
        assert!(matches!(
            Keypair::load(&dir.path().join("bad.key")),
            Err(ClientError::Key(_))
        ));
    }
}
