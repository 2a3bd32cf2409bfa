//! Released profiles are immutable: their bytes (and so their digests) and
//! their parsed form are pinned here. A change to a released `defs/*.toml`
//! fails this test — add a new profile instead.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn released_profile_digests_are_pinned() {
    let pinned = [
        ("v1", include_str!("golden/v1.digest").trim().to_string()),
        ("v2", include_str!("golden/v2.digest").trim().to_string()),
        ("v3", include_str!("golden/v3.digest").trim().to_string()),
    ];
    for (name, want) in pinned {
        assert_eq!(
            hermit_profiles::digest(name).unwrap(),
            want,
            "profile {name} changed"
        );
    }
}

#[test]
fn parsed_profiles_match_golden_json() {
    for name in hermit_profiles::names() {
        let p = hermit_profiles::Profile::get(name).unwrap();
        let got = serde_json::to_string_pretty(&p.to_canonical_json()).unwrap() + "\n";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
        if std::env::var_os("HERMIT_BLESS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            got,
            want,
            "golden {} differs (HERMIT_BLESS=1 rewrites it)",
            path.display()
        );
    }
}
