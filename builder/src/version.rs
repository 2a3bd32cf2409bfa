//! The version hermit reports: `hermit --version` prints `hermit VERSION`,
//! and every record states the same string as `hermit.version`.

/// `<package version> (<first 12 digits of the commit>)`, or
/// `<package version> (unknown commit)` when built outside a checkout; set
/// by `build.rs`.
pub const VERSION: &str = env!("HERMIT_VERSION");

#[cfg(test)]
mod tests {
    use super::VERSION;

    #[test]
    fn version_is_the_package_version_and_a_commit() {
        let rest = VERSION
            .strip_prefix(concat!(env!("CARGO_PKG_VERSION"), " ("))
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{VERSION:?}"));
        assert!(
            rest == "unknown commit"
                || (rest.len() == 12 && rest.chars().all(|c| c.is_ascii_hexdigit()))
                || std::env::var_os("HERMIT_COMMIT").is_some(),
            "{VERSION:?}"
        );
    }
}
