//! sha256 + size digests, as REAPI and hermit spell them.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::reapi;

/// A blob's identity: lower-case hex sha256 and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub hash: String,
    pub size: u64,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hash: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
        }
    }

    /// A digest from a hex sha256 (64 lower-case hex digits) and a size.
    pub fn new(hash: &str, size: u64) -> Result<Digest> {
        if hash.len() != 64
            || !hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::Protocol {
                what: "digest",
                why: format!("{hash:?} is not a lower-case hex sha256"),
            });
        }
        Ok(Digest {
            hash: hash.to_string(),
            size,
        })
    }

    /// The REAPI message for this digest.
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash.clone(),
            size_bytes: i64::try_from(self.size).unwrap_or(i64::MAX),
        }
    }

    /// A digest from a REAPI message; refuses malformed hashes and negative sizes.
    pub fn from_proto(d: &reapi::Digest) -> Result<Digest> {
        let size = u64::try_from(d.size_bytes).map_err(|_| Error::Protocol {
            what: "digest",
            why: format!("negative size {}", d.size_bytes),
        })?;
        Digest::new(&d.hash, size)
    }

    /// Checks `bytes` against this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        let got = Digest::of(bytes);
        if &got != self {
            return Err(Error::Corrupt {
                digest: self.to_string(),
                got: got.to_string(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    /// `sha256:HEX/SIZE`, hermit's spelling with the size added.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}/{}", self.hash, self.size)
    }
}

/// An incremental digest for data that arrives in pieces.
#[derive(Default)]
pub struct Hasher {
    sha: Sha256,
    size: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub fn finish(self) -> Digest {
        Digest {
            hash: hex::encode(self.sha.finalize()),
            size: self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_blob() {
        let d = Digest::of(b"");
        assert_eq!(
            d.hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.size, 0);
        assert!(d.verify(b"").is_ok());
        assert!(d.verify(b"x").unwrap_err().is_integrity());
    }

    #[test]
    fn proto_round_trip_and_refusals() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::from_proto(&d.to_proto()).unwrap(), d);
        let mut bad = d.to_proto();
        bad.size_bytes = -1;
        assert!(Digest::from_proto(&bad).is_err());
        bad.size_bytes = 5;
        bad.hash = "ABC".into();
        assert!(Digest::from_proto(&bad).is_err());
        bad.hash = d.hash.to_uppercase();
        assert!(Digest::from_proto(&bad).is_err());
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Hasher::default();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), Digest::of(b"hello"));
    }
}
