//! Reading credentials from requests: the `Authorization` header (Basic or Bearer), and who the
//! client is: its address (for login throttling) and whether forwarded headers are believed.
//!
//! **Invariant:** `X-Forwarded-For`, `X-Real-IP` and `X-Forwarded-Proto` are read only when the
//! TCP peer is one of `server.trusted_proxies`; otherwise anyone could pick the address their
//! failed logins are counted against, or the scheme of the token realm.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::ApiState;
use crate::config::TrustedProxies;

/// What the `Authorization` header carries.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// No (usable) header.
    None,
    /// `Basic user:password`.
    Basic {
        /// User name.
        username: String,
        /// Password or API key secret.
        password: String,
    },
    /// `Bearer <token>`.
    Bearer(String),
    /// A header that is present but unreadable.
    Malformed,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => f.write_str("Bearer(***)"),
            Credentials::Malformed => f.write_str("Malformed"),
        }
    }
}

impl Credentials {
    /// Parses the `Authorization` header.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Credentials {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Credentials::None;
        };
        let Ok(value) = value.to_str() else {
            return Credentials::Malformed;
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Credentials::Bearer(rest.to_owned());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            return decode_basic(rest).unwrap_or(Credentials::Malformed);
        }
        Credentials::Malformed
    }
}

fn decode_basic(b64: &str) -> Option<Credentials> {
    let bytes = STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// Who sent a request, as far as the connection and trusted proxies tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Client {
    /// The client's address: the TCP peer, or what trusted proxies forwarded. `None` only when
    /// the connection is unknown (in-process calls).
    pub(crate) ip: Option<IpAddr>,
    /// The TCP peer is a trusted proxy, so its `X-Forwarded-Proto` is believed.
    pub(crate) via_trusted_proxy: bool,
}

impl Client {
    /// Reads the client from the connection's peer and, when that peer is a trusted proxy, the
    /// forwarded headers: `X-Forwarded-For` walked from the right (the hop the nearest proxy
    /// saw) to the first address outside `trusted`, else `X-Real-IP`. An entry that is not an
    /// address stops the walk at the last trusted hop, so garbage never picks a bucket.
    pub(crate) fn from_parts(
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
        trusted: &TrustedProxies,
    ) -> Client {
        let Some(peer) = peer.map(|p| p.ip().to_canonical()) else {
            return Client {
                ip: None,
                via_trusted_proxy: false,
            };
        };
        if !trusted.contains(peer) {
            return Client {
                ip: Some(peer),
                via_trusted_proxy: false,
            };
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut client = peer;
        if forwarded.is_empty() {
            if let Some(ip) = headers
                .get("x-real-ip")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_forwarded_ip)
            {
                client = ip;
            }
        } else {
            for hop in forwarded.iter().rev() {
                let Some(ip) = parse_forwarded_ip(hop) else {
                    break;
                };
                client = ip;
                if !trusted.contains(ip) {
                    break;
                }
            }
        }
        Client {
            ip: Some(client),
            via_trusted_proxy: true,
        }
    }

    /// The client of a request whose connection info sits in `extensions`.
    pub(crate) fn of(
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
        trusted: &TrustedProxies,
    ) -> Client {
        let peer = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        Client::from_parts(peer, headers, trusted)
    }
}

impl FromRequestParts<ApiState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client::of(
            &parts.extensions,
            &parts.headers,
            &state.trusted_proxies,
        ))
    }
}

/// One forwarded address: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parse(v: &str) -> Credentials {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        Credentials::from_headers(&h)
    }

    #[test]
    fn parses_authorization_headers() {
        assert_eq!(
            parse("Basic YWxpY2U6czNjcjN0OmV4dHJh"),
            Credentials::Basic {
                username: "alice".into(),
                password: "s3cr3t:extra".into()
            }
        );
        assert_eq!(
            parse("Bearer abc.def"),
            Credentials::Bearer("abc.def".into())
        );
        assert_eq!(parse("bearer  abc"), Credentials::Bearer("abc".into()));
        assert_eq!(parse("Basic !!!"), Credentials::Malformed);
        assert_eq!(parse("Digest x"), Credentials::Malformed);
        assert_eq!(
            Credentials::from_headers(&HeaderMap::new()),
            Credentials::None
        );
        assert!(!format!("{:?}", parse("Basic YWxpY2U6czNjcjN0")).contains("s3cr3t"));
    }

    fn client(peer: &str, trusted: &str, headers: &[(&str, &str)]) -> Client {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Client::from_parts(
            Some(peer.parse().unwrap()),
            &h,
            &TrustedProxies::parse(trusted).unwrap(),
        )
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let xff = [("x-forwarded-for", "6.6.6.6")];
        // No trusted proxies (the default): the peer, whatever the headers say.
        let c = client("1.2.3.4:5", "", &xff);
        assert_eq!(c.ip, ip("1.2.3.4"));
        assert!(!c.via_trusted_proxy);
        // A peer outside the list is the client.
        let c = client("1.2.3.4:5", "10.0.0.0/8", &[("x-real-ip", "6.6.6.6")]);
        assert_eq!(c.ip, ip("1.2.3.4"));
        assert!(!c.via_trusted_proxy);
        // A trusted peer: the rightmost untrusted hop. A client's own (spoofed) entries further
        // left are not reached.
        let c = client(
            "10.0.0.2:5",
            "10.0.0.0/8",
            &[("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.0.0.9")],
        );
        assert_eq!(c.ip, ip("7.7.7.7"));
        assert!(c.via_trusted_proxy);
        // Several headers are one list, in order.
        let c = client(
            "10.0.0.2:5",
            "10.0.0.0/8",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "7.7.7.7:4000"),
            ],
        );
        assert_eq!(c.ip, ip("7.7.7.7"));
        // Every hop trusted: the leftmost.
        let c = client(
            "10.0.0.2:5",
            "10.0.0.0/8, 192.168.1.1",
            &[("x-forwarded-for", "192.168.1.1,10.1.1.1")],
        );
        assert_eq!(c.ip, ip("192.168.1.1"));
        // Garbage stops the walk at the last trusted hop.
        let c = client(
            "10.0.0.2:5",
            "10.0.0.0/8",
            &[("x-forwarded-for", "not-an-ip, 10.3.3.3")],
        );
        assert_eq!(c.ip, ip("10.3.3.3"));
        let c = client("10.0.0.2:5", "10.0.0.0/8", &[("x-forwarded-for", "junk")]);
        assert_eq!(c.ip, ip("10.0.0.2"));
        // No X-Forwarded-For: X-Real-IP; neither: the proxy itself.
        let c = client("10.0.0.2:5", "10.0.0.0/8", &[("x-real-ip", "8.8.8.8")]);
        assert_eq!(c.ip, ip("8.8.8.8"));
        assert_eq!(client("10.0.0.2:5", "10.0.0.0/8", &[]).ip, ip("10.0.0.2"));
        // IPv6, bracketed with a port, and IPv4-mapped peers.
        let c = client(
            "[::ffff:10.0.0.2]:5",
            "10.0.0.0/8",
            &[("x-forwarded-for", "[2001:db8::7]:443")],
        );
        assert_eq!(c.ip, ip("2001:db8::7"));
        assert!(c.via_trusted_proxy);
        let c = client(
            "[fd00::1]:5",
            "fd00::/8",
            &[("x-forwarded-for", "2001:db8::8")],
        );
        assert_eq!(c.ip, ip("2001:db8::8"));
        // Unknown connection.
        assert_eq!(
            Client::from_parts(None, &HeaderMap::new(), &TrustedProxies::default()).ip,
            None
        );
    }
}
