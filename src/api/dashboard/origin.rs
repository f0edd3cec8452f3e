//! Where a request comes from, as far as the admin listener can tell: whether a browser sent it from the
//! dashboard's own origin (Fetch Metadata, else Origin against Host), and whether it names this machine at all.
//! The second check defeats DNS rebinding: a web page whose host name an attacker points at 127.0.0.1 reaches a
//! loopback port as a "same-origin" request, but its Host header still carries the attacker's name, so a
//! listener on a loopback address answers only requests addressed to a loopback name.

#![deny(clippy::indexing_slicing)]

use axum::http::HeaderMap;

/// False when the browser says the request comes from another site: by Fetch Metadata (`Sec-Fetch-Site`) when
/// it sends it, else when its Origin names a host other than the one the request was sent to. Requests with
/// neither header (curl, scripts) pass: they carry no ambient cookie of a victim's browser.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, h)| h == host),
        (Some(_), None) => false,
        _ => true,
    }
}

/// The host part of a Host header value (without the port; IPv6 literals keep their brackets).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// True when a Host header names this machine's loopback interface: `localhost` (or a name under
/// `.localhost`), an address in 127.0.0.0/8, or `[::1]`. A request without a Host header (HTTP/1.0 tools) passes.
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get("host") else { return true };
    let Ok(host) = host.to_str() else { return false };
    let name = host_name(host).to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    name == "localhost"
        || name.ends_with(".localhost")
        || name == "[::1]"
        || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        assert!(same_origin(&headers(&[])), "curl sends neither header");
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        let host = ("host", "127.0.0.1:9000");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:9000")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        // Fetch Metadata decides when present: a form post under Referrer-Policy no-referrer says Origin: null.
        assert!(same_origin(&headers(&[host, ("origin", "null"), ("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://127.0.0.1:9000"), ("sec-fetch-site", "cross-site")])));
    }

    #[test]
    fn only_loopback_names_pass_on_a_loopback_listener() {
        for ok in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "127.1.2.3:80",
            "localhost:8081",
            "LOCALHOST",
            "a.localhost:1",
            "[::1]:8081",
            "[::1]",
        ] {
            assert!(loopback_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in [
            "evil.example:8081",
            "evil.example",
            "10.0.0.1:8081",
            "localhost.evil.example",
            "[::2]:8081",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
        assert!(loopback_host(&headers(&[])), "no Host header at all");
    }
}
