//! What a name may be: uplink and rule names (they become nft chain names and environment
//! values), interface names (the kernel's rules *and* what is safe inside an nft string) and
//! Unix group names. Each check says what is wrong and what is allowed.

use super::MAX_NAME_LEN;

/// Uplink names that the planner uses for its own chains (`to_main`, `restore_none`, …).
const RESERVED_NAMES: [&str; 2] = ["main", "none"];

/// The kernel's IFNAMSIZ less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// Whether `s` may name an uplink or a rule: `[a-z0-9_-]{1,15}`.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Why `s` cannot name an uplink, if it cannot.
pub(super) fn uplink_name_problem(s: &str) -> Option<String> {
    if !is_valid_name(s) {
        return Some(format!(
            "invalid name {s:?}: use 1..=15 characters from a-z, 0-9, '_' and '-'"
        ));
    }
    RESERVED_NAMES
        .contains(&s)
        .then(|| format!("{s:?} is reserved (multiwan's own chains use it); choose another name"))
}

/// Whether `s` is an interface name the kernel accepts and nft matches literally.
pub fn is_valid_ifname(s: &str) -> bool {
    ifname_problem(s).is_none()
}

/// Why `s` cannot be an interface name: the kernel's `dev_valid_name` (1..=15 bytes, not
/// `.` or `..`, no `/`, `:` or whitespace) and what the kernel refuses at creation (`%`
/// makes a name template; `all` and `default` are sysctl directories), plus what nft needs
/// to match it literally inside `"…"`: no `*` (a wildcard), no `"` or `\`, printable ASCII.
pub(super) fn ifname_problem(s: &str) -> Option<String> {
    const ALLOWED: &str = "1..=15 printable ASCII characters except space, '/', ':', '%', '*', '\"' and '\\'; not \".\", \"..\", \"all\" or \"default\"";
    let why = if s.is_empty() {
        "it is empty".to_string()
    } else if s.len() > MAX_IFNAME_LEN {
        format!("it is {} bytes long, the kernel allows 15", s.len())
    } else if s == "." || s == ".." {
        "the kernel reserves it".to_string()
    } else if s == "all" || s == "default" {
        format!("net.ipv4.conf.{s} holds the kernel's settings for every interface; no interface can have this name")
    } else if s.contains('*') {
        "'*' is a wildcard in nft: it would match (and masquerade) other interfaces, the LAN too"
            .to_string()
    } else if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '/' | ':' | '%' | '"' | '\\'))
    {
        format!("it contains {c:?}")
    } else {
        return None;
    };
    Some(format!(
        "invalid interface name {s:?}: {why} (allowed: {ALLOWED})"
    ))
}

/// Whether `s` is a portable Unix group name: `[a-z_][a-z0-9_-]{0,31}`.
pub fn is_valid_group(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && s.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_and_nft() {
        for ok in [
            "eth0", "br-lan", "eth0.100", "wg_0", "a$b", "@x", "0", "-x", "ppp0", "a.b",
        ] {
            assert!(is_valid_ifname(ok), "{ok:?} should be valid");
        }
        for (bad, why) in [
            ("", "empty"),
            ("abcdefghijklmnop", "16 bytes"),
            (".", "reserves"),
            ("..", "reserves"),
            ("all", "every interface"),
            ("default", "every interface"),
            ("eth*", "wildcard"),
            ("*", "wildcard"),
            ("eth0:1", "':'"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("a\tb", "'\\t'"),
            ("eth%d", "'%'"),
            ("a\"b", "'\"'"),
            ("a\\b", "'\\\\'"),
            ("ethé", "'é'"),
        ] {
            let p = ifname_problem(bad).unwrap_or_else(|| panic!("{bad:?} should be invalid"));
            assert!(p.contains(why), "{bad:?}: {p}");
            assert!(p.contains("allowed: 1..=15 printable ASCII"), "{p}");
        }
    }

    #[test]
    fn uplink_names_exclude_the_planners_own() {
        assert_eq!(uplink_name_problem("isp-1"), None);
        assert!(uplink_name_problem("main").is_some_and(|p| p.contains("reserved")));
        assert!(uplink_name_problem("none").is_some_and(|p| p.contains("reserved")));
        assert!(uplink_name_problem("ISP").is_some_and(|p| p.contains("a-z, 0-9")));
    }

    #[test]
    fn group_names() {
        for ok in ["netadm", "_multiwan", "wheel-2", &"a".repeat(32)] {
            assert!(is_valid_group(ok), "{ok:?}");
        }
        for bad in ["", "1abc", "Net", "a b", "a.b", "-x", &"a".repeat(33)] {
            assert!(!is_valid_group(bad), "{bad:?}");
        }
    }
}
