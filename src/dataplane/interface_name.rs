//! Network interface names: the one rule for what arcd accepts as an interface name (the TUN
//! device's `tun.name`, the `wg show` name of a rendezvous point's control socket, the name put
//! into the egress nftables script), and the scheme that names a rendezvous point's interface
//! (`ap-northeast-1` → `arc-apne1`).
//!
//! Config validation, the TUN device, the control socket and egress NAT all call [`validate`], so
//! a name that passes `arcd`'s configuration check is never refused later at start.

use std::fmt::Write as _;

use crate::ids::RendezvousPointId;

/// Longest interface name Linux accepts (IFNAMSIZ 16 including the terminating NUL); `wg`
/// truncates longer names.
pub const MAX_LEN: usize = 15;

/// A name that is not a usable interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "interface name {0:?} must be 1 to {MAX_LEN} characters of ASCII letters, digits, `-`, `_` and `.` (and not `.` or `..`)"
)]
pub struct InvalidInterfaceName(pub String);

/// Accepts what the kernel accepts as an interface name and what is safe to put into a socket
/// path, an nft script and a command line: 1 to 15 of `[A-Za-z0-9._-]`, not `.` or `..`. The
/// kernel would take more (any byte but `/`, `:` and whitespace), but such names break the
/// places above, so they are refused before anything is created.
pub fn validate(name: &str) -> Result<(), InvalidInterfaceName> {
    if is_plain(name, MAX_LEN) && name != "." && name != ".." {
        Ok(())
    } else {
        Err(InvalidInterfaceName(name.to_owned()))
    }
}

/// 1 to `max_len` of ASCII letters, digits, `-`, `_` and `.`: safe in a path component (but for
/// `.` and `..`), an nft script and a command line. Also the rule for network namespace names.
pub fn is_plain(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The interface name of a rendezvous point (its control socket, what `wg show` lists): `arc-` +
/// an abbreviation that keeps the whole name within IFNAMSIZ (15 characters), as AWS abbreviates
/// its regions: `ap-northeast-1` → `arc-apne1`, `eu-central-1` → `arc-euc1`, `us-west-2` →
/// `arc-usw2`, `ap-southeast-2` → `arc-apse2`.
///
/// Rule: the id is lower-cased and split into words at every character that is not an ASCII
/// letter or digit. The first word is kept whole; each later word made of compass points
/// (`north`, `south`, `east`, `west`, e.g. `northeast`) becomes their initials (`ne`); other
/// later words become their first letter followed by their digits (`central` → `c`, `1` → `1`,
/// `zone2` → `z2`). If the abbreviation is empty or longer than 11 characters, it is cut to 6
/// characters and followed by 5 hex digits of a hash of the whole id, so long ids stay distinct.
/// The result always passes [`validate`].
pub fn for_rendezvous_point(rp_id: &RendezvousPointId) -> String {
    const MAX_ABBREV: usize = MAX_LEN - "arc-".len();
    let lower = rp_id.as_str().to_ascii_lowercase();
    let mut abbrev = String::new();
    for (i, word) in lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        if i == 0 {
            abbrev.push_str(word);
        } else if let Some(initials) = compass_initials(word) {
            abbrev.push_str(&initials);
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                abbrev.push(first);
            }
            abbrev.extend(chars.filter(|c| c.is_ascii_digit()));
        }
    }
    if abbrev.is_empty() || abbrev.len() > MAX_ABBREV {
        abbrev.truncate(6);
        let _ = write!(
            abbrev,
            "{:05x}",
            fnv1a(rp_id.as_str().as_bytes()) & 0xf_ffff
        );
    }
    format!("arc-{abbrev}")
}

/// `northeast` → `ne`, `west` → `w`; `None` when the word is not made only of compass points.
fn compass_initials(mut word: &str) -> Option<String> {
    let mut initials = String::new();
    while !word.is_empty() {
        let point = ["north", "south", "east", "west"]
            .into_iter()
            .find(|p| word.starts_with(p))?;
        initials.push_str(&point[..1]);
        word = &word[point.len()..];
    }
    (!initials.is_empty()).then_some(initials)
}

/// 32-bit FNV-1a: small and stable across Rust versions (the name must not change on upgrade).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_regions() {
        for (id, name) in [
            ("ap-northeast-1", "arc-apne1"),
            ("eu-central-1", "arc-euc1"),
            ("us-west-2", "arc-usw2"),
            ("ap-southeast-2", "arc-apse2"),
            ("ap-south-1", "arc-aps1"),
            ("eu-north-1", "arc-eun1"),
            ("us-east-1", "arc-use1"),
            ("ca-central-1", "arc-cac1"),
            ("us-gov-west-1", "arc-usgw1"),
            ("AP-Northeast-3", "arc-apne3"),
            ("lab", "arc-lab"),
            ("osaka_edge.2", "arc-osakae2"),
            ("zone-az2b", "arc-zonea2"),
        ] {
            assert_eq!(for_rendezvous_point(&id.into()), name, "{id}");
        }
    }

    #[test]
    fn names_fit_ifnamsiz_and_stay_distinct() {
        let long_a = for_rendezvous_point(&"a-very-long-rendezvous-point-name-number-1".into());
        let long_b = for_rendezvous_point(&"a-very-long-rendezvous-point-name-number-2".into());
        let weird = for_rendezvous_point(&"---".into());
        let unicode = for_rendezvous_point(&"東京".into());
        let first_long = for_rendezvous_point(&"rendezvouspoint-1".into());
        for name in [&long_a, &long_b, &weird, &unicode, &first_long] {
            assert!(name.len() <= 15, "{name}");
            assert!(name.starts_with("arc-"), "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{name}"
            );
            validate(name).unwrap();
        }
        assert_ne!(long_a, long_b);
        assert_ne!(weird, unicode);
        assert!(first_long.starts_with("arc-rendez"), "{first_long}");
        // Stable across runs and Rust versions.
        assert_eq!(
            for_rendezvous_point(&"---".into()),
            format!("arc-{:05x}", fnv1a(b"---") & 0xf_ffff)
        );
    }

    #[test]
    fn rejects_bad_names() {
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "sixteen-chars-xx",
            "a b",
            "tab\tx",
            "a:b",
            "nul\0",
            "東京",
            "x;y",
        ] {
            let err = validate(name).expect_err(name);
            assert!(err.to_string().contains("1 to 15 characters"), "{err}");
        }
        for name in ["fifteen-chars-x", "arc0", "a", "tun_1.x", "..."] {
            validate(name).unwrap();
        }
    }
}
