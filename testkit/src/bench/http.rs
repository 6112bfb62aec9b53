//! The benchmark's HTTP client: a tuned reqwest pool plus Docker token authentication.
//!
//! On a `401` carrying `WWW-Authenticate: Bearer realm=…,service=…,scope=…` the client fetches
//! a token from the realm (with the optional Basic credentials), caches it under the scope the
//! caller named, and retries the request once. A `Basic` challenge is answered with the
//! credentials directly. Request bodies are `Bytes`, so a retry never re-reads a stream.
//!
//! Invariant: every URL this client contacts, including redirects, `Location` headers and
//! token realms, is on a loopback address; anything else is refused before a connection opens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::header::{AUTHORIZATION, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};

/// How long a small request (manifest, HEAD, list, token) may take.
pub(crate) const SMALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses `url` and checks that it points at a loopback address.
pub(crate) fn loopback_url(url: &str) -> anyhow::Result<Url> {
    let parsed = Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    ensure_loopback(&parsed)?;
    Ok(parsed)
}

fn ensure_loopback(url: &Url) -> anyhow::Result<()> {
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !loopback || url.scheme() != "http" {
        bail!("refusing {url}: aerugo-bench only talks plain HTTP to loopback addresses");
    }
    Ok(())
}

/// A registry endpoint with its connection pool and token cache.
#[derive(Debug)]
pub(crate) struct RegistryHttp {
    client: Client,
    base: Url,
    credentials: Option<(String, String)>,
    /// `Authorization` values by the caller's scope key.
    auth: RwLock<HashMap<String, HeaderValue>>,
    /// The last Bearer challenge's realm and service, for [`RegistryHttp::login`].
    bearer: RwLock<Option<(String, Option<String>)>>,
    /// Sent on requests that have no cached token yet (see [`RegistryHttp::preemptive_basic`]).
    basic_first: Option<HeaderValue>,
}

impl RegistryHttp {
    /// A client for the registry (or static server) at `base`, sized for `max_connections`.
    pub(crate) fn new(
        base: &str,
        credentials: Option<(String, String)>,
        max_connections: usize,
    ) -> anyhow::Result<Self> {
        let base = loopback_url(base)?;
        let client = Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(max_connections)
            .pool_idle_timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 5 || ensure_loopback(attempt.url()).is_err() {
                    attempt.error("redirect refused: too many, or not to a loopback address")
                } else {
                    attempt.follow()
                }
            }))
            .build()?;
        Ok(Self {
            client,
            base,
            credentials,
            auth: RwLock::new(HashMap::new()),
            bearer: RwLock::new(None),
            basic_first: None,
        })
    }

    /// A client sharing this one's connections that sends the Basic credentials up front
    /// instead of fetching a token per scope; `None` without credentials. Used to create
    /// fixtures cheaply on registries that accept Basic credentials on `/v2` (a registry that
    /// does not answers 401 and the usual token flow follows).
    pub(crate) fn preemptive_basic(&self) -> anyhow::Result<Option<Self>> {
        let Some((user, pass)) = &self.credentials else {
            return Ok(None);
        };
        let built = self
            .client
            .get(self.base.clone())
            .basic_auth(user, Some(pass))
            .build()?;
        Ok(Some(Self {
            client: self.client.clone(),
            base: self.base.clone(),
            credentials: self.credentials.clone(),
            auth: RwLock::new(HashMap::new()),
            bearer: RwLock::new(None),
            basic_first: built.headers().get(AUTHORIZATION).cloned(),
        }))
    }

    /// Resolves a path (`/v2/...`) or a `Location` value against the base URL.
    pub(crate) fn url(&self, path_or_url: &str) -> anyhow::Result<Url> {
        let url = self
            .base
            .join(path_or_url)
            .with_context(|| format!("bad URL {path_or_url:?}"))?;
        ensure_loopback(&url)?;
        Ok(url)
    }

    /// The URL in the `Location` header of `res`.
    pub(crate) fn location(&self, res: &Response) -> anyhow::Result<Url> {
        let loc = res
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .with_context(|| format!("{} answered {} without Location", res.url(), res.status()))?;
        self.url(loc)
    }

    /// Sends the request `make` builds, authenticating for `scope` (for example
    /// `repository:bench/base:pull`) when the registry asks to.
    pub(crate) async fn send(
        &self,
        scope: &str,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let cached = self.cached(scope).or_else(|| self.basic_first.clone());
        let res = with_auth(make(&self.client), cached.as_ref())
            .send()
            .await?;
        if res.status() != StatusCode::UNAUTHORIZED {
            return Ok(res);
        }
        let Some(challenge) = res
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return Ok(res);
        };
        let value = self.authenticate(&challenge, scope).await?;
        self.auth
            .write()
            .map_err(|_| anyhow::anyhow!("token cache poisoned"))?
            .insert(scope.to_owned(), value.clone());
        Ok(with_auth(make(&self.client), Some(&value)).send().await?)
    }

    fn cached(&self, scope: &str) -> Option<HeaderValue> {
        self.auth.read().ok()?.get(scope).cloned()
    }

    /// Whether requests under the scope key `key` carry credentials.
    pub(crate) fn has_auth(&self, key: &str) -> bool {
        self.cached(key).is_some()
    }

    /// Fetches a token for `scope` from the realm of an earlier Bearer challenge and caches it
    /// under `key`, so requests sent with that key carry it from the first one. Returns false
    /// when the registry never asked for a token.
    pub(crate) async fn login(&self, key: &str, scope: &str) -> anyhow::Result<bool> {
        let seen = self
            .bearer
            .read()
            .map_err(|_| anyhow::anyhow!("challenge cache poisoned"))?
            .clone();
        let Some((realm, service)) = seen else {
            return Ok(false);
        };
        let value = self.fetch_token(&realm, service.as_deref(), scope).await?;
        self.auth
            .write()
            .map_err(|_| anyhow::anyhow!("token cache poisoned"))?
            .insert(key.to_owned(), value);
        Ok(true)
    }

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` value.
    async fn authenticate(&self, challenge: &str, scope: &str) -> anyhow::Result<HeaderValue> {
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, pass) = self
                .credentials
                .as_ref()
                .context("the registry wants Basic credentials; pass --username/--password")?;
            let req = self
                .client
                .get(self.base.clone())
                .basic_auth(user, Some(pass));
            let built = req.build()?;
            return built
                .headers()
                .get(AUTHORIZATION)
                .cloned()
                .context("reqwest built no Authorization header");
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            bail!("unsupported authentication challenge {challenge:?}");
        }
        let realm = params
            .get("realm")
            .context("Bearer challenge without realm")?;
        let service = params.get("service").cloned();
        if let Ok(mut seen) = self.bearer.write() {
            *seen = Some((realm.clone(), service.clone()));
        }
        let scope = params.get("scope").map_or(scope, String::as_str);
        self.fetch_token(realm, service.as_deref(), scope).await
    }

    /// `GET <realm>?service=…&scope=…` with the Basic credentials, if any.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> anyhow::Result<HeaderValue> {
        let realm = loopback_url(realm)?;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = service {
            query.push(("service", service));
        }
        if !scope.is_empty() {
            query.push(("scope", scope));
        }
        let mut req = self
            .client
            .get(realm.clone())
            .query(&query)
            .timeout(SMALL_TIMEOUT);
        if let Some((user, pass)) = &self.credentials {
            req = req.basic_auth(user, Some(pass));
        }
        let res = req.send().await?;
        let status = res.status();
        if !status.is_success() {
            bail!("token realm {realm} answered {status}");
        }
        let body: serde_json::Value = res.json().await.context("token response is not JSON")?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .context("token response has neither token nor access_token")?;
        Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
    }
}

fn with_auth(req: RequestBuilder, auth: Option<&HeaderValue>) -> RequestBuilder {
    match auth {
        Some(v) => req.header(AUTHORIZATION, v.clone()),
        None => req,
    }
}

/// Splits `Bearer realm="…",service="…"` into the scheme and its (lower-cased) parameters.
/// Quoted values may hold commas and backslash escapes.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_owned(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:5001/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:5001/token");
        assert_eq!(p["service"], "reg");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn unquoted_and_escaped_values_parse() {
        let (scheme, p) = parse_challenge(r#"Basic Realm=x, error="a\"b""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(p["realm"], "x");
        assert_eq!(p["error"], "a\"b");
    }

    #[test]
    fn only_loopback_is_allowed() {
        assert!(loopback_url("http://127.0.0.1:5000/v2/").is_ok());
        assert!(loopback_url("http://[::1]:5000/").is_ok());
        assert!(loopback_url("http://localhost/").is_ok());
        assert!(loopback_url("http://10.0.0.1/").is_err());
        assert!(loopback_url("http://example.com/").is_err());
        assert!(loopback_url("https://127.0.0.1/").is_err());
    }
}
