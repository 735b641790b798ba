//! IPv4 subnet arithmetic shared by config validation, the store and the data plane, so the rule
//! "two address ranges may not share an address" is written once.

use ipnet::Ipv4Net;

/// Whether `a` and `b` share at least one address. Two CIDR blocks either nest or are disjoint,
/// so they overlap exactly when one contains the other's network address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("net")
    }

    #[test]
    fn nested_equal_and_disjoint_blocks() {
        let cases = [
            ("10.0.0.0/8", "10.1.0.0/16", true),
            ("10.1.0.0/16", "10.0.0.0/8", true),
            ("10.1.0.0/16", "10.1.0.0/16", true),
            ("10.1.0.0/16", "10.2.0.0/16", false),
            // Adjacent blocks touch but share no address.
            ("10.0.0.0/25", "10.0.0.128/25", false),
            ("10.0.0.0/24", "10.0.0.255/32", true),
            ("0.0.0.0/0", "192.168.1.1/32", true),
        ];
        for (a, b, expected) in cases {
            assert_eq!(overlaps(&net(a), &net(b)), expected, "{a} vs {b}");
            assert_eq!(overlaps(&net(b), &net(a)), expected, "{b} vs {a}");
        }
    }
}
