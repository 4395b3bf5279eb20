//! Encryption with age: archives become `.tar.zst.age` (plain age format: `age -d | zstd -d | tar x` works).
//!
//! The backup host needs no secret in recipients mode: it encrypts to `age1…` or ssh public keys; only restore
//! and verify need an identity file. Passphrase mode (scrypt) is the alternative for a single shared secret.
//!
//! ## Tampering and swapping
//!
//! * Every stored object's sha256 is in the manifest; `verify` and `restore` recompute it, so a changed or
//!   swapped archive is caught against its manifest. age's own per-chunk AEAD catches modified ciphertext and a
//!   truncated stream (at the end — so restore commits nothing before decryption finished cleanly).
//! * The manifest itself is sealed: each backup draws a random 32-byte seal key, stores it age-encrypted to the
//!   same recipients (or passphrase) in the manifest, and puts HMAC-SHA256(seal key, manifest with `seal`
//!   empty) in `seal`. Verify/restore decrypt the seal key with the identity and check the HMAC, so editing a
//!   manifest (e.g. to match a swapped archive's hash) is detected.
//! * Limits, stated plainly: in recipients mode anyone who knows the full public key can create a *new*,
//!   self-consistent backup (that is what public-key encryption allows). voltar stores only fingerprints of the
//!   recipients in the bucket, never the keys, so an attacker with bucket access alone cannot; keep the public
//!   keys off the bucket. Passphrase mode needs the passphrase to forge anything. Moving a whole backup to
//!   another id is caught because the sealed manifest names its id.
//!
//! Never enable age's `plugin` feature (RUSTSEC-2024-0433). Secrets never reach a log line.

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::catalog::{EncryptionRecord, Manifest};
use crate::config::{read_secret_file, Encryption};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption recipient `{0}` is not an age (age1…) or ssh public key")]
    BadRecipient(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("identity file {path}: {message}")]
    Identity { path: PathBuf, message: String },
    #[error("backup {what} is encrypted: pass --identity FILE (age or ssh private key) or --passphrase-file FILE")]
    NeedKey { what: String },
    #[error("cannot decrypt {what}: {message} (wrong key or passphrase?)")]
    WrongKey { what: String, message: String },
    #[error("manifest of backup {id} failed its authenticity check: it was modified or does not belong to these keys")]
    BadSeal { id: String },
    #[error("manifest of backup {id} is encrypted but has no authenticity check (its `seal` field is gone): it was modified")]
    MissingSeal { id: String },
    #[error("encrypting: {0}")]
    Encrypt(String),
}

/// How archives are encrypted for a run. Cheap to clone (holds key strings, parsed when used).
#[derive(Clone)]
pub struct Encryptor {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Recipients(Vec<String>),
    Passphrase(SecretString),
}

fn parse_recipient(s: &str) -> Result<Box<dyn age::Recipient + Send>, CryptoError> {
    if let Ok(r) = s.parse::<age::x25519::Recipient>() {
        return Ok(Box::new(r));
    }
    if let Ok(r) = s.parse::<age::ssh::Recipient>() {
        return Ok(Box::new(r));
    }
    Err(CryptoError::BadRecipient(s.chars().take(40).collect()))
}

/// Short fingerprint of a recipient: first 16 bytes of sha256 of its text, hex.
pub fn fingerprint(recipient: &str) -> String {
    hex::encode(&Sha256::digest(recipient.trim().as_bytes())[..16])
}

impl Encryptor {
    /// `None` when encryption is not configured. Checks every recipient and reads the passphrase file.
    pub fn from_config(e: &Encryption) -> Result<Option<Encryptor>, CryptoError> {
        if !e.recipients.is_empty() {
            for r in &e.recipients {
                parse_recipient(r)?;
            }
            return Ok(Some(Encryptor {
                mode: Mode::Recipients(e.recipients.clone()),
            }));
        }
        if let Some(p) = &e.passphrase_file {
            let pass = read_secret_file(p)?;
            return Ok(Some(Encryptor {
                mode: Mode::Passphrase(SecretString::from(pass)),
            }));
        }
        Ok(None)
    }

    fn age(&self) -> Result<age::Encryptor, CryptoError> {
        match &self.mode {
            Mode::Recipients(rs) => {
                let parsed: Vec<Box<dyn age::Recipient + Send>> = rs
                    .iter()
                    .map(|r| parse_recipient(r))
                    .collect::<Result<_, _>>()?;
                age::Encryptor::with_recipients(
                    parsed.iter().map(|r| r.as_ref() as &dyn age::Recipient),
                )
                .map_err(|e| CryptoError::Encrypt(e.to_string()))
            }
            Mode::Passphrase(p) => Ok(age::Encryptor::with_user_passphrase(p.clone())),
        }
    }

    /// Record the encryption parameters in the manifest and seal it (see the module docs).
    pub fn seal(&self, m: &mut Manifest) -> Result<(), CryptoError> {
        let key: [u8; 32] = rand::random();
        let mut sealed = Vec::new();
        {
            let armored =
                age::armor::ArmoredWriter::wrap_output(&mut sealed, age::armor::Format::AsciiArmor)
                    .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
            let mut w = self
                .age()?
                .wrap_output(armored)
                .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
            w.write_all(&key)
                .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
            w.finish()
                .and_then(|a| a.finish())
                .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
        }
        m.encryption = Some(EncryptionRecord {
            mode: match self.mode {
                Mode::Recipients(_) => "recipients".into(),
                Mode::Passphrase(_) => "passphrase".into(),
            },
            recipient_fingerprints: match &self.mode {
                Mode::Recipients(rs) => rs.iter().map(|r| fingerprint(r)).collect(),
                Mode::Passphrase(_) => vec![],
            },
            sealed_key: Some(String::from_utf8(sealed).expect("armor is ASCII")),
        });
        m.seal = None;
        m.seal = Some(hmac_hex(&key, &m.to_json()));
        Ok(())
    }
}

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// The keys to read encrypted backups with.
pub struct Decryptor {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl Decryptor {
    /// Load identities from age identity files / ssh private keys, or a passphrase file.
    pub fn load(
        identity_files: &[PathBuf],
        passphrase_file: Option<&Path>,
    ) -> Result<Decryptor, CryptoError> {
        let mut identities: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        for f in identity_files {
            identities.extend(load_identity_file(f)?);
        }
        if let Some(p) = passphrase_file {
            let pass = read_secret_file(p)?;
            identities.push(Box::new(age::scrypt::Identity::new(SecretString::from(
                pass,
            ))));
        }
        Ok(Decryptor { identities })
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Wrap an encrypted stream. Errors name `what` (the object).
    pub fn reader<'a, R: Read + 'a>(
        &self,
        r: R,
        what: &str,
    ) -> Result<Box<dyn Read + 'a>, CryptoError> {
        if self.identities.is_empty() {
            return Err(CryptoError::NeedKey { what: what.into() });
        }
        let d =
            age::Decryptor::new_buffered(BufReader::with_capacity(1 << 16, r)).map_err(|e| {
                CryptoError::WrongKey {
                    what: what.into(),
                    message: e.to_string(),
                }
            })?;
        let r = d
            .decrypt(
                self.identities
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .map_err(|e| CryptoError::WrongKey {
                what: what.into(),
                message: e.to_string(),
            })?;
        Ok(Box::new(r))
    }

    /// Check an encrypted manifest's seal. Plain manifests have nothing to check.
    pub fn check_seal(&self, m: &Manifest) -> Result<(), CryptoError> {
        let Some(enc) = &m.encryption else {
            return Ok(());
        };
        let id = m.id.to_string();
        let (Some(sealed), Some(seal)) = (&enc.sealed_key, &m.seal) else {
            return Err(CryptoError::MissingSeal { id });
        };
        let armored = age::armor::ArmoredReader::new(sealed.as_bytes());
        // In the user's words: the seal is the manifest's authenticity check.
        let what = format!("the key that authenticates the manifest of backup {id}");
        let mut r = self.reader(armored, &what)?;
        let mut key = Vec::new();
        r.read_to_end(&mut key).map_err(|e| CryptoError::WrongKey {
            what,
            message: e.to_string(),
        })?;
        let mut unsealed = m.clone();
        unsealed.seal = None;
        let expect = hmac_hex(&key, &unsealed.to_json());
        // Constant-time compare through the MAC API.
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(&unsealed.to_json());
        let given = hex::decode(seal).map_err(|_| CryptoError::BadSeal { id: id.clone() })?;
        if mac.verify_slice(&given).is_err() || expect != *seal {
            return Err(CryptoError::BadSeal { id });
        }
        Ok(())
    }
}

fn load_identity_file(
    path: &Path,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, CryptoError> {
    let err = |message: String| CryptoError::Identity {
        path: path.to_path_buf(),
        message,
    };
    let text = read_secret_file(path).map_err(|e| err(e.to_string()))?;
    if text.contains("AGE-SECRET-KEY-") {
        return Ok(age_identities(&text)
            .map_err(err)?
            .into_iter()
            .map(|id| Box::new(id) as Box<dyn age::Identity + Send + Sync>)
            .collect());
    }
    match age::ssh::Identity::from_buffer(text.as_bytes(), Some(path.display().to_string())) {
        Ok(age::ssh::Identity::Unencrypted(k)) => Ok(vec![Box::new(age::ssh::Identity::Unencrypted(k))]),
        Ok(age::ssh::Identity::Encrypted(_)) => Err(err(
            "passphrase-protected ssh keys are not supported; use an unencrypted key or an age identity".into(),
        )),
        Ok(age::ssh::Identity::Unsupported(k)) => Err(err(format!("unsupported ssh key: {k:?}"))),
        Err(e) => Err(err(format!("not an age identity or ssh private key ({e})"))),
    }
}

/// The stored-bytes layer of the packer: plain or age-encrypted. `finish` writes age's final chunk.
pub enum StoredWriter<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> StoredWriter<W> {
    pub fn new(w: W, enc: Option<&Encryptor>) -> io::Result<StoredWriter<W>> {
        match enc {
            None => Ok(StoredWriter::Plain(w)),
            Some(e) => {
                let a = e.age().map_err(|e| io::Error::other(e.to_string()))?;
                Ok(StoredWriter::Age(a.wrap_output(w)?))
            }
        }
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            StoredWriter::Plain(w) => Ok(w),
            StoredWriter::Age(a) => a.finish(),
        }
    }
}

impl<W: Write> Write for StoredWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StoredWriter::Plain(w) => w.write(buf),
            StoredWriter::Age(a) => a.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            StoredWriter::Plain(w) => w.flush(),
            StoredWriter::Age(a) => a.flush(),
        }
    }
}

/// The public keys (`age1…`) of the age identities in an identity file, in file order.
pub fn public_keys(path: &Path) -> Result<Vec<String>, CryptoError> {
    let err = |message: String| CryptoError::Identity {
        path: path.to_path_buf(),
        message,
    };
    let text = read_secret_file(path).map_err(|e| err(e.to_string()))?;
    if !text.contains("AGE-SECRET-KEY-") {
        return Err(err(
            "holds no AGE-SECRET-KEY-1… line (for an ssh key, its public key is the .pub file next to it)"
                .into(),
        ));
    }
    Ok(age_identities(&text)
        .map_err(err)?
        .iter()
        .map(|id| id.to_public().to_string())
        .collect())
}

/// The keys of an age identity file: one per line, `#` comments and blank lines ignored.
fn age_identities(text: &str) -> Result<Vec<age::x25519::Identity>, String> {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            line.parse::<age::x25519::Identity>()
                .map_err(|_| format!("line {} is not an AGE-SECRET-KEY-1… key", n + 1))
        })
        .collect()
}

/// The text of a new age identity file, as `age-keygen` writes it (so either tool reads the other's files),
/// and its public key.
pub fn identity_file_text(created: chrono::DateTime<chrono::Utc>) -> (String, String) {
    let (secret, public) = generate_identity();
    let text = format!(
        "# created: {}\n# public key: {public}\n{secret}\n",
        created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    (text, public)
}

/// Convenience for tests and the CLI: a fresh x25519 identity (secret, public).
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::BackupId;
    use std::os::unix::fs::PermissionsExt;

    fn manifest() -> Manifest {
        Manifest {
            format: 1,
            tool: "t".into(),
            id: BackupId::new(chrono::Utc::now()),
            job: "j".into(),
            host: "h".into(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            tags: vec![],
            sources: vec![],
            failed: vec![],
            encryption: None,
            seal: None,
        }
    }

    fn key_file(dir: &Path, secret: &str) -> PathBuf {
        let p = dir.join("id.txt");
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn round_trip_and_seal() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = generate_identity();
        let enc = Encryptor::from_config(&Encryption {
            recipients: vec![public.clone()],
            passphrase_file: None,
        })
        .unwrap()
        .unwrap();
        let mut w = StoredWriter::new(Vec::new(), Some(&enc)).unwrap();
        w.write_all(b"hello archive").unwrap();
        let ct = w.finish().unwrap();
        assert!(!ct.windows(5).any(|w| w == b"hello"));
        let dec = Decryptor::load(&[key_file(dir.path(), &secret)], None).unwrap();
        let mut out = Vec::new();
        dec.reader(&ct[..], "x")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello archive");

        let mut m = manifest();
        enc.seal(&mut m).unwrap();
        assert_eq!(
            m.encryption.as_ref().unwrap().recipient_fingerprints,
            vec![fingerprint(&public)]
        );
        dec.check_seal(&m).unwrap();
        // Any edit breaks the seal.
        let mut edited = m.clone();
        edited.job = "other".into();
        assert!(matches!(
            dec.check_seal(&edited),
            Err(CryptoError::BadSeal { .. })
        ));
        // Dropping the seal is caught too.
        let mut unsealed = m.clone();
        unsealed.seal = None;
        assert!(matches!(
            dec.check_seal(&unsealed),
            Err(CryptoError::MissingSeal { .. })
        ));
        // A wrong key is a clear error.
        let (other, _) = generate_identity();
        let d2 = Decryptor::load(&[key_file(dir.path(), &other)], None).unwrap();
        let e = d2
            .reader(&ct[..], "pg.tar.zst.age")
            .err()
            .expect("wrong key fails");
        assert!(e.to_string().contains("pg.tar.zst.age"), "{e}");
        // Issue 10: no jargon ("manifest seal") without saying what it is.
        let e = d2.check_seal(&m).expect_err("wrong key fails").to_string();
        assert!(
            e.starts_with(&format!(
                "cannot decrypt the key that authenticates the manifest of backup {}: ",
                m.id
            )) && e.ends_with("(wrong key or passphrase?)"),
            "{e}"
        );
        let e = dec.check_seal(&unsealed).unwrap_err().to_string();
        assert!(e.contains("has no authenticity check"), "{e}");
    }

    #[test]
    fn truncated_ciphertext_is_detected() {
        let (secret, public) = generate_identity();
        let dir = tempfile::tempdir().unwrap();
        let enc = Encryptor::from_config(&Encryption {
            recipients: vec![public],
            passphrase_file: None,
        })
        .unwrap()
        .unwrap();
        let mut w = StoredWriter::new(Vec::new(), Some(&enc)).unwrap();
        w.write_all(&vec![7u8; 200_000]).unwrap();
        let ct = w.finish().unwrap();
        let dec = Decryptor::load(&[key_file(dir.path(), &secret)], None).unwrap();
        let cut = &ct[..ct.len() - 100];
        let mut out = Vec::new();
        assert!(dec.reader(cut, "x").unwrap().read_to_end(&mut out).is_err());
    }

    #[test]
    fn bad_recipient_is_named() {
        let e = Encryptor::from_config(&Encryption {
            recipients: vec!["age1nope".into()],
            passphrase_file: None,
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("age1nope"), "{e}");
    }
}
