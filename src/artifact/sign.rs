//! ed25519 keys and the signature block.
//!
//! A signature covers the manifest digest only (the manifest lists the sha256 of every
//! chunk, so one signature vouches for every byte). The signed message is the domain
//! tag [`SIGNING_CONTEXT`] followed by the 32-byte sha256 of the manifest.
//!
//! Key files are text: the secret key file holds `tenpak-ed25519-secret <64 hex>` (the
//! 32-byte seed), the public key file `tenpak-ed25519-public <64 hex>`. A key id is the
//! first 8 bytes of the sha256 of the public key, in hex.
//!
//! Signature block: `"TNPKSIG1" | count u32 | reserved u32 (0) |` then per signature
//! `public key [32] | signature [64]`, little-endian counts.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::format::FormatError;
use crate::{Error, Result};

/// Domain separation for manifest signatures.
pub const SIGNING_CONTEXT: &[u8] = b"tenpak/tnpk/v1 manifest sha256\n";
const BLOCK_MAGIC: &[u8; 8] = b"TNPKSIG1";
const ENTRY_LEN: usize = 32 + 64;
const SECRET_TAG: &str = "tenpak-ed25519-secret";
const PUBLIC_TAG: &str = "tenpak-ed25519-public";

/// Key id: hex of the first 8 bytes of sha256(public key).
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// Generates a new signing key from the OS random source.
pub fn generate() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::Key {
        path: "<os random>".into(),
        reason: e.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key file's one line (`tenpak-ed25519-public <64 hex>\n`), as `keygen`
/// writes it and the registry serves it.
pub fn public_key_line(key: &VerifyingKey) -> String {
    format!("{PUBLIC_TAG} {}\n", hex::encode(key.as_bytes()))
}

/// Writes `path` (secret, mode 0600 on Unix) and `path.pub` (public).
pub fn write_keypair(key: &SigningKey, path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::Key {
            path: path.to_path_buf(),
            reason: "already exists; refusing to overwrite a key".into(),
        });
    }
    let secret = format!("{SECRET_TAG} {}\n", hex::encode(key.to_bytes()));
    let public = public_key_line(&key.verifying_key());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| Error::io("create", path, e))?;
    std::io::Write::write_all(&mut f, secret.as_bytes())
        .map_err(|e| Error::io("write", path, e))?;
    let pub_path = public_path(path);
    std::fs::write(&pub_path, public).map_err(|e| Error::io("write", &pub_path, e))
}

/// `KEY.pub` beside `KEY`.
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

fn read_tagged(path: &Path, tag: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let bad = |reason: &str| Error::Key {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(h), None) if t == tag => {
            let v = hex::decode(h).map_err(|_| bad("key is not hex"))?;
            v.try_into().map_err(|_| bad("key is not 32 bytes"))
        }
        (Some(t), _, _) if t == SECRET_TAG || t == PUBLIC_TAG => {
            Err(bad(&format!("expected a {tag} key, found a {t} key")))
        }
        _ => Err(bad(&format!(
            "not a TenPak key file (expected `{tag} <hex>`)"
        ))),
    }
}

/// Loads a secret key file.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_tagged(path, SECRET_TAG)?))
}

/// Loads a public key file.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey> {
    let b = read_tagged(path, PUBLIC_TAG)?;
    VerifyingKey::from_bytes(&b).map_err(|_| Error::Key {
        path: path.to_path_buf(),
        reason: "not a valid ed25519 public key".into(),
    })
}

fn message(manifest_sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(manifest_sha256);
    m
}

/// Builds a signature block with one signature per key.
pub fn sign_block(keys: &[&SigningKey], manifest_sha256: &[u8; 32]) -> Vec<u8> {
    if keys.is_empty() {
        return vec![];
    }
    let msg = message(manifest_sha256);
    let mut b = BLOCK_MAGIC.to_vec();
    b.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for k in keys {
        b.extend_from_slice(k.verifying_key().as_bytes());
        b.extend_from_slice(&k.sign(&msg).to_bytes());
    }
    b
}

/// Signatures found in a block: (public key, signature).
pub fn parse_block(block: &[u8]) -> Result<Vec<(VerifyingKey, Signature)>, FormatError> {
    if block.is_empty() {
        return Ok(vec![]);
    }
    let bad = |s: &str| FormatError::SignatureBlock(s.to_string());
    if block.len() < 16 || &block[..8] != BLOCK_MAGIC {
        return Err(bad("bad magic"));
    }
    let n = u32::from_le_bytes([block[8], block[9], block[10], block[11]]) as usize;
    if block[12..16] != [0; 4] {
        return Err(bad("reserved bytes not zero"));
    }
    if n == 0 || block.len() != 16 + n.saturating_mul(ENTRY_LEN) {
        return Err(bad(&format!(
            "{n} signatures do not fit {} bytes",
            block.len()
        )));
    }
    block[16..]
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let pk: [u8; 32] = e[..32].try_into().map_err(|_| bad("key"))?;
            let sig: [u8; 64] = e[32..].try_into().map_err(|_| bad("signature"))?;
            let pk = VerifyingKey::from_bytes(&pk).map_err(|_| bad("invalid public key"))?;
            Ok((pk, Signature::from_bytes(&sig)))
        })
        .collect()
}

/// Key ids of everyone who signed (without verifying).
pub fn signers(block: &[u8]) -> Result<Vec<String>, FormatError> {
    Ok(parse_block(block)?.iter().map(|(k, _)| key_id(k)).collect())
}

/// Checks that `key` signed the manifest digest.
pub fn verify(
    block: &[u8],
    manifest_sha256: &[u8; 32],
    key: &VerifyingKey,
) -> Result<(), FormatError> {
    let sigs = parse_block(block)?;
    let id = key_id(key);
    let Some((_, sig)) = sigs.iter().find(|(k, _)| k == key) else {
        return Err(FormatError::NotSignedBy {
            key_id: id,
            signers: sigs.iter().map(|(k, _)| key_id(k)).collect(),
        });
    };
    key.verify_strict(&message(manifest_sha256), sig)
        .or_else(|_| key.verify(&message(manifest_sha256), sig))
        .map_err(|_| FormatError::BadSignature { key_id: id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject() {
        let k = generate().expect("key");
        let other = generate().expect("key");
        let digest = [9u8; 32];
        let block = sign_block(&[&k], &digest);
        assert_eq!(verify(&block, &digest, &k.verifying_key()), Ok(()));
        assert!(matches!(
            verify(&block, &[8u8; 32], &k.verifying_key()),
            Err(FormatError::BadSignature { .. })
        ));
        assert!(matches!(
            verify(&block, &digest, &other.verifying_key()),
            Err(FormatError::NotSignedBy { .. })
        ));
        assert!(matches!(
            verify(&[], &digest, &k.verifying_key()),
            Err(FormatError::NotSignedBy { .. })
        ));
        let mut tampered = block.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            verify(&tampered, &digest, &k.verifying_key()),
            Err(FormatError::BadSignature { .. })
        ));
        assert!(matches!(
            parse_block(&block[..block.len() - 1]),
            Err(FormatError::SignatureBlock(_))
        ));
    }

    #[test]
    fn key_files_round_trip_and_are_typed() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("k");
        let k = generate().expect("key");
        write_keypair(&k, &p).expect("write");
        assert!(
            matches!(write_keypair(&k, &p), Err(crate::Error::Key { .. })),
            "no overwrite"
        );
        assert_eq!(load_signing_key(&p).expect("sk").to_bytes(), k.to_bytes());
        assert_eq!(
            load_public_key(&public_path(&p)).expect("pk"),
            k.verifying_key()
        );
        assert!(
            matches!(load_public_key(&p), Err(Error::Key { .. })),
            "secret given as public"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).expect("m").permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
