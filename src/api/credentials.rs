//! Reading credentials from requests: the `Authorization` header (Basic or Bearer) and the client
//! address used for login throttling.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

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

/// The client's address for throttling, from the connection.
pub(crate) fn client_address(connect: Option<&ConnectInfo<SocketAddr>>) -> String {
    connect.map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
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
}
