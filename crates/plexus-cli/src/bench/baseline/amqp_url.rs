//! `--amqp-url`: the broker the `rabbitmq` baseline may use. The bench moves traffic on
//! loopback only, so the URL must name a loopback host (`127.0.0.0/8`, `::1` or
//! `localhost`) over plain `amqp://`; anything else is refused before the run starts.
//!
//! Invariants: [`check`] accepts a URL only if [`is_loopback`] accepts its host; the
//! `rabbitmq` baseline checks the host its AMQP client parsed again with [`is_loopback`],
//! so the two parsers cannot disagree into a connection elsewhere.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The broker `scripts/rabbitmq.sh start` runs, as its default user.
pub const DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Checks that `url` is an `amqp://` URL of a loopback host.
pub fn check(url: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("--amqp-url {}: {why}", without_password(url)));
    let Some(rest) = strip_scheme(url) else {
        return refuse("not an amqp:// URL (TLS is not needed on loopback)");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if is_loopback(host) {
        Ok(())
    } else {
        refuse("the broker must be on loopback (127.0.0.0/8, ::1 or localhost)")
    }
}

/// Whether `host` (a name, an IPv4 address or an IPv6 address, bracketed or not) is a
/// loopback host.
pub fn is_loopback(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// `url` with its password, if any, replaced by `***`, to be shown in messages.
pub fn without_password(url: &str) -> String {
    let Some(rest) = strip_scheme(url) else {
        return url.to_string();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let tail = &rest[authority.len()..];
            let secret = if userinfo.contains(':') { ":***" } else { "" };
            format!("amqp://{user}{secret}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

fn strip_scheme(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    scheme.eq_ignore_ascii_case("amqp").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_accepted() {
        for url in [
            DEFAULT,
            "amqp://127.0.0.1",
            "amqp://127.0.101.7:5673/%2f",
            "AMQP://guest:guest@localhost:5672",
            "amqp://guest:guest@[::1]:5672/%2f",
            "amqp://user:p@ss:word@127.0.0.1:1/vhost?heartbeat=10",
        ] {
            assert_eq!(check(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn other_hosts_and_schemes_are_refused() {
        for url in [
            "amqp://guest:guest@10.0.0.1:5672/%2f",
            "amqp://broker.example.com",
            "amqp://guest:guest@0.0.0.0:5672",
            "amqp://[::2]:5672",
            "amqp://127.0.0.1.example.com",
            "amqp://guest:guest@",
            "amqps://127.0.0.1:5671",
            "http://127.0.0.1:5672",
            "127.0.0.1:5672",
        ] {
            let error = check(url).expect_err(url);
            assert!(error.starts_with("--amqp-url "), "{error}");
        }
    }

    #[test]
    fn a_refused_url_does_not_show_its_password() {
        let error = check("amqp://guest:secret@10.1.2.3:5672/%2f").expect_err("refused");
        assert!(!error.contains("secret"), "{error}");
        assert!(
            error.contains("amqp://guest:***@10.1.2.3:5672/%2f"),
            "{error}"
        );
        assert!(error.contains("loopback"), "{error}");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.255.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("LocalHost"));
        assert!(!is_loopback(""));
        assert!(!is_loopback("128.0.0.1"));
        assert!(!is_loopback("localhost.example.com"));
    }
}
