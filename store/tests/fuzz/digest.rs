//! Digests, image references and mirror URLs: round trips and refusals.

use hermit_store::oci::Reference;
use hermit_store::{Digest, Url};
use proptest::prelude::*;

use crate::common::{mutate, mutations, run};

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

/// Text near the digest form: valid digests, wrong prefixes, case, lengths.
fn digestish() -> impl Strategy<Value = String> {
    prop_oneof![
        digest().prop_map(|d| d.to_string()),
        (digest(), mutations()).prop_map(|(d, ms)| {
            String::from_utf8_lossy(&mutate(d.to_string().into_bytes(), &ms)).into_owned()
        }),
        "(sha256|SHA256|sha512|md5)?:?[0-9a-fA-F]{0,70}",
        any::<String>(),
    ]
}

#[test]
fn fuzz_digest() {
    run("digest", file!(), 512, (digest(), digestish()), |(d, s)| {
        // Every digest survives display, hex, and JSON.
        prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        prop_assert_eq!(Digest::from_hex(&d.hex()), Ok(d));
        let json = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        // Any text either is the canonical form of a digest, or is refused
        // with a message that quotes it.
        match s.parse::<Digest>() {
            Ok(p) => prop_assert_eq!(p.to_string(), s.clone()),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&format!("{s:?}")), "{}", msg);
            }
        }
        match Digest::from_hex(&s) {
            Ok(p) => prop_assert_eq!(p.hex(), s.clone()),
            Err(e) => {
                let quoted = format!("{:?}", format!("sha256:{s}"));
                prop_assert!(e.to_string().contains(&quoted), "{}", e);
            }
        }
        Ok(())
    });
}

/// One path component of a repository name, as the distribution spec allows.
fn repo_component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}((\\.|_|__|-{1,2})[a-z0-9]{1,6}){0,2}"
}

fn registry() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("localhost".to_string()),
        Just("127.0.0.1:5000".to_string()),
        Just("[::1]:5000".to_string()),
        "[a-z]([a-z0-9]{0,3}-?[a-z0-9]{1,3})?(\\.[a-z]([a-z0-9]{0,3}-?[a-z0-9]{1,3})?){1,3}(:[1-9][0-9]{0,3})?",
        (1u16..).prop_map(|p| format!("localhost:{p}")),
    ]
}

#[derive(Debug, Clone)]
struct Parts {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Digest,
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        registry(),
        prop::collection::vec(repo_component(), 1..4).prop_map(|c| c.join("/")),
        prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        digest(),
    )
        .prop_map(|(registry, repository, tag, digest)| Parts {
            registry,
            repository,
            tag,
            digest,
        })
}

fn text(p: &Parts) -> String {
    match &p.tag {
        Some(t) => format!("{}/{}:{t}@{}", p.registry, p.repository, p.digest),
        None => format!("{}/{}@{}", p.registry, p.repository, p.digest),
    }
}

/// A repository name as the OCI distribution spec allows it:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
fn valid_repository(s: &str) -> bool {
    s.split('/').all(|c| {
        let b = c.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let sep_start = i;
            while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
                i += 1;
            }
            let sep = &c[sep_start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
                return false;
            }
        }
        true
    })
}

/// The URL `pull` builds from a reference names the reference's registry
/// as its host and keeps the repository inside `/v2/`.
fn url_stays_put(r: &Reference) -> Result<(), TestCaseError> {
    let base = format!(
        "http://{}/v2/{}/manifests/{}",
        r.registry, r.repository, r.digest
    );
    let u = Url::parse(&base).map_err(|e| TestCaseError::fail(format!("{base}: {e}")))?;
    let want = format!("/v2/{}/manifests/{}", r.repository, r.digest);
    prop_assert_eq!(u.path(), want.as_str(), "{} is not the URL asked for", u);
    prop_assert!(u.username().is_empty() && u.password().is_none());
    prop_assert!(u.query().is_none() && u.fragment().is_none());
    Ok(())
}

#[test]
fn fuzz_reference() {
    let strategy = (parts(), mutations(), any::<String>());
    run("reference", file!(), 512, strategy, |(p, ms, junk)| {
        let s = text(&p);
        let r: Reference = s
            .parse()
            .map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(&r.registry, &p.registry);
        prop_assert_eq!(&r.repository, &p.repository);
        prop_assert_eq!(r.digest, p.digest);
        prop_assert_eq!(r.to_string().parse::<Reference>().unwrap(), r.clone());
        url_stays_put(&r)?;
        // Mutated and random text: refused naming the text, or a reference
        // that is well-formed and round-trips.
        let mutated = String::from_utf8_lossy(&mutate(s.into_bytes(), &ms)).into_owned();
        for s in [mutated, junk] {
            match s.parse::<Reference>() {
                Ok(r) => {
                    prop_assert!(valid_repository(&r.repository), "{:?} from {:?}", r, s);
                    prop_assert_eq!(r.to_string().parse::<Reference>().unwrap(), r.clone());
                    url_stays_put(&r)?;
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(&format!("{s:?}")), "{}", msg);
                }
            }
        }
        Ok(())
    });
}

/// Mirrors as users write them: folders, `file://`, `http(s)://` URLs.
#[test]
fn fuzz_mirror() {
    let strategy = prop_oneof![
        "(http|https|file|ftp|HTTP)://[a-z0-9.:@\\[\\]%/?#-]{0,24}",
        "[a-z0-9./ -]{0,16}",
        any::<String>(),
    ];
    run("mirror", file!(), 512, strategy, |s| {
        let base = std::path::Path::new("/base");
        match hermit_store::Mirror::parse(&s, base) {
            Ok(hermit_store::Mirror::Http(u)) => {
                prop_assert!(matches!(u.scheme(), "http" | "https"), "{}", u);
                prop_assert!(u.path().ends_with('/'), "{}", u);
                prop_assert!(u.host_str().is_some_and(|h| !h.is_empty()), "{}", u);
            }
            Ok(hermit_store::Mirror::Dir(p)) => {
                if s.contains("://") {
                    prop_assert!(
                        s.starts_with("file://") && p.is_absolute(),
                        "{} -> {:?}",
                        s,
                        p
                    );
                } else {
                    prop_assert_eq!(p, base.join(&s));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(&format!("{s:?}")), "{}", msg);
            }
        }
        Ok(())
    });
}
