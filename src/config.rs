//! Configuration: plain serde structs, loaded as defaults < TOML file < `AERUGO_<SECTION>__<KEY>`
//! environment variables, then validated.
//!
//! A leaf module: it depends on nothing else in the crate. Unknown keys and bad values stop startup
//! with a message that names the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Metadata database settings.
    pub database: DatabaseConfig,
    /// Blob storage settings.
    pub storage: StorageConfig,
    /// Registry behaviour.
    pub registry: RegistryConfig,
    /// Size limits.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Authentication and tokens.
    pub auth: AuthConfig,
    /// Caches: moka in process, plus Redis when `cache.redis_url` is set.
    pub cache: CacheConfig,
    /// Background jobs and the work queue.
    pub jobs: JobsConfig,
}

/// Background jobs: queue consumers and periodic jobs, run by every node.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// How often a node looks for due work items when no local write woke it, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long a claim lasts before the item goes back to the queue (a node that died holding
    /// it loses nothing), in seconds.
    pub claim_lease_seconds: u64,
    /// Items claimed per query.
    pub batch_size: u32,
    /// Attempts of a failing item before it is buried (kept as a dead letter for inspection).
    pub max_attempts: u32,
    /// How long change records are kept, in hours.
    pub change_retention_hours: u64,
    /// Test only (hidden; 0, the default, turns it off): how long a queue consumer waits after
    /// claiming items before it carries them out, in milliseconds. Process tests use it to kill a
    /// node while it holds claims. Never set it in production: claimed items wait that long.
    #[serde(skip_serializing_if = "is_zero")]
    pub test_hold_claims_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            claim_lease_seconds: 60,
            batch_size: 32,
            max_attempts: 10,
            change_retention_hours: 168,
            test_hold_claims_ms: 0,
        }
    }
}

/// A secret value: never printed, never in `Debug` output, serialized as `***`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Authentication, token and tenancy settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Password of the site admin `admin` created on first start when no user exists. Unset: one
    /// is generated and printed once on standard output.
    pub admin_password: Option<Secret>,
    /// File holding the admin password (takes precedence over `admin_password`).
    pub admin_password_file: Option<PathBuf>,
    /// PKCS#8 PEM file with the ES256 key that signs tokens; created if missing. Every node of a
    /// cluster must use the same key (or have it among `verify_key_files`).
    pub signing_key_file: PathBuf,
    /// Further PEM keys (public or private) whose tokens are still accepted: rotation.
    pub verify_key_files: Vec<PathBuf>,
    /// The `service` (token audience) named in challenges.
    pub service: String,
    /// The token issuer (`iss`).
    pub issuer: String,
    /// Lifetime of registry and API tokens, in seconds (at least 60).
    pub token_ttl_seconds: u64,
    /// Lifetime of refresh tokens (`docker login`), in days.
    pub refresh_token_ttl_days: u64,
    /// Whether anyone may create an account with `POST /api/v1/users`.
    pub self_signup: bool,
    /// Visibility of repositories created by a push: `private` or `public`.
    pub default_visibility: String,
    /// Failed logins per user and client address allowed in a window; past it that user is
    /// refused from that address (429) until the window ends. Failures of one user from all
    /// addresses together past this many only slow further attempts down (a bounded delay, never
    /// a refusal), so an attacker elsewhere cannot lock the user out.
    pub login_max_failures: u32,
    /// Failed logins per client address allowed in a window, whatever the usernames (known or
    /// not); past it every login from that address is refused (429) until the window ends.
    pub login_max_failures_per_address: u32,
    /// Length of the failed-login window, in seconds.
    pub login_window_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_password: None,
            admin_password_file: None,
            signing_key_file: PathBuf::from("./aerugo-data/token-signing-key.pem"),
            verify_key_files: Vec::new(),
            service: "aerugo".into(),
            issuer: "aerugo".into(),
            token_ttl_seconds: 300,
            refresh_token_ttl_days: 90,
            self_signup: false,
            default_visibility: "private".into(),
            login_max_failures: 10,
            login_max_failures_per_address: 50,
            login_window_seconds: 300,
        }
    }
}

/// HTTP server settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen_address: SocketAddr,
    /// The URL clients use to reach this registry (behind a load balancer, its URL). Empty: derived
    /// from the request.
    pub public_url: String,
    /// Seconds to wait for in-flight requests on shutdown.
    pub shutdown_grace_seconds: u64,
    /// Seconds a request without a blob body may take before it is answered with 503.
    pub request_timeout_seconds: u64,
    /// Seconds a blob upload body may go without sending data before the upload request fails.
    pub body_idle_timeout_seconds: u64,
    /// The reverse proxies (CIDRs or addresses) whose `X-Forwarded-For`, `X-Real-IP` and
    /// `X-Forwarded-Proto` headers are believed. The client address is found by walking
    /// `X-Forwarded-For` from the right to the first address outside this list. Empty (the
    /// default): the headers are ignored and the TCP peer is the client. In the environment, one
    /// CIDR or several separated by commas (`127.0.0.1/32,10.0.0.0/8`).
    pub trusted_proxies: TrustedProxies,
}

/// A list of networks, read from a TOML list or a comma-separated string, each a CIDR
/// (`10.0.0.0/8`, `fd00::/8`) or a single address (`127.0.0.1`, taken as `/32` or `/128`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses one comma-separated list; the error names the entry that is not a network.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether `ip` lies in one of the networks (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8) or an IP address"))
}

impl Serialize for TrustedProxies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        let text = match Form::deserialize(d)? {
            Form::One(s) => s,
            Form::Many(v) => v.join(","),
        };
        TrustedProxies::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            public_url: String::new(),
            shutdown_grace_seconds: 30,
            request_timeout_seconds: 60,
            body_idle_timeout_seconds: 60,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// Metadata database settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://<path>` (embedded) or `postgres://…` (PostgreSQL/CockroachDB).
    pub url: String,
    /// Maximum number of pooled connections.
    pub max_connections: usize,
    /// Seconds to wait for a database connection (a new one, or a free one from the pool) before
    /// the request fails with 503 `UNAVAILABLE`; also the TCP timeout for unanswered writes, so a
    /// lost database never hangs a request. PostgreSQL/CockroachDB only; 0 counts as 1.
    pub connect_timeout_seconds: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://./aerugo-data/aerugo.db".into(),
            max_connections: 8,
            connect_timeout_seconds: 5,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .finish()
    }
}

/// A database or Redis URL fit for logs, errors and `config check`: the password is gone in every
/// form a driver accepts (`user:password@` userinfo, even holding `/`, `?` or `@`; a `password`
/// query parameter, its name or value percent-encoded or not), the rest kept for diagnosis.
///
/// The userinfo is taken to end at the *last* `@` of the URL, further than any driver reads it
/// (tokio-postgres stops at the first), so a password with a raw `@` or `/` is hidden whole; a
/// userinfo that is not a plain user name is hidden entirely. Text that is not a URL is shown only
/// when it cannot hold a secret (no `@`, `=` or the word "password").
pub fn redact_url(url: &str) -> String {
    const HIDDEN: &str = "***";
    let Some((scheme, rest)) = url.split_once("://") else {
        let risky = url.contains(['@', '=']) || url.to_ascii_lowercase().contains("password");
        return if risky {
            HIDDEN.to_owned()
        } else {
            url.to_owned()
        };
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, _)) => (user, true),
            None => (userinfo, false),
        };
        let plain = user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%+!$'()*,;".contains(&b));
        if !plain {
            out.push_str(HIDDEN);
        } else if password {
            out.push_str(user);
            out.push(':');
            out.push_str(HIDDEN);
        } else {
            out.push_str(user);
        }
        out.push('@');
    }
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest, None),
    };
    out.push_str(base);
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| {
                let (key, _) = param.split_once('=').unwrap_or((param, ""));
                let decoded: String = form_urlencoded::parse(key.as_bytes())
                    .map(|(k, v)| format!("{k}{v}"))
                    .collect();
                if decoded.to_ascii_lowercase().contains("password") {
                    format!("{key}={HIDDEN}")
                } else {
                    param.to_owned()
                }
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Which blob backend to use.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// A local directory.
    Fs,
    /// Process memory (lost on exit; for tests).
    Memory,
    /// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW).
    S3,
}

/// Blob storage settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Backend type.
    #[serde(rename = "type")]
    pub kind: StorageType,
    /// Root directory for `fs`.
    pub root: PathBuf,
    /// `s3`: the bucket's name.
    pub bucket: String,
    /// `s3`: the region requests are signed for (`us-east-1` suits most S3-compatible servers).
    pub region: String,
    /// `s3`: the endpoint URL the nodes use (unset: AWS S3's regional endpoint).
    pub endpoint: Option<String>,
    /// `s3`: path-style addressing (`<endpoint>/<bucket>/<key>`, for MinIO and Ceph RGW) instead of
    /// virtual-hosted style (`<bucket>.<endpoint>/<key>`).
    pub path_style: bool,
    /// `s3`: a key prefix inside the bucket.
    pub prefix: String,
    /// `s3`: the endpoint URL clients reach S3 at, used only to sign download URLs (unset: `endpoint`).
    pub public_endpoint: Option<String>,
    /// `s3`: answer blob GETs with a 307 redirect to a presigned S3 URL (false: stream through the node).
    pub redirect: bool,
    /// `s3`: how long a presigned download URL stays valid.
    pub presign_expiry_seconds: u64,
    /// `s3`: the access key id (unset: the `AWS_ACCESS_KEY_ID` environment variable).
    pub access_key_id: Option<String>,
    /// `s3`: the secret access key; prefer `AERUGO_STORAGE__SECRET_ACCESS_KEY`, `secret_access_key_file`
    /// or `AWS_SECRET_ACCESS_KEY` to writing it into the file.
    pub secret_access_key: Option<Secret>,
    /// `s3`: a file holding the secret access key (takes precedence over `secret_access_key`).
    pub secret_access_key_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            kind: StorageType::Fs,
            root: PathBuf::from("./aerugo-data/blobs"),
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            prefix: String::new(),
            public_endpoint: None,
            redirect: true,
            presign_expiry_seconds: 1200,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
        }
    }
}

/// S3 credentials, resolved from the configuration or the `AWS_*` environment variables.
#[derive(Clone, Debug)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
}

impl StorageConfig {
    /// The S3 credentials: `access_key_id` or `AWS_ACCESS_KEY_ID`; `secret_access_key_file`,
    /// `secret_access_key` or `AWS_SECRET_ACCESS_KEY`.
    pub fn s3_credentials(&self) -> Result<S3Credentials, ConfigError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let access_key_id = self
            .access_key_id
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| env("AWS_ACCESS_KEY_ID"))
            .ok_or(ConfigError::Invalid {
                key: "storage.access_key_id",
                message: "s3 storage needs credentials: set storage.access_key_id \
                    (AERUGO_STORAGE__ACCESS_KEY_ID) or AWS_ACCESS_KEY_ID"
                    .into(),
            })?;
        let secret = match &self.secret_access_key_file {
            Some(path) => Some(Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Invalid {
                        key: "storage.secret_access_key_file",
                        message: format!("cannot read {}: {e}", path.display()),
                    })?
                    .trim()
                    .to_owned(),
            )),
            None => self
                .secret_access_key
                .clone()
                .filter(|v| !v.expose().is_empty())
                .or_else(|| env("AWS_SECRET_ACCESS_KEY").map(Secret::new)),
        };
        let secret_access_key = secret.ok_or(ConfigError::Invalid {
            key: "storage.secret_access_key",
            message: "s3 storage needs credentials: set AERUGO_STORAGE__SECRET_ACCESS_KEY, \
                storage.secret_access_key_file or AWS_SECRET_ACCESS_KEY"
                .into(),
        })?;
        Ok(S3Credentials {
            access_key_id,
            secret_access_key,
        })
    }

    /// Checks the `s3` settings.
    fn validate_s3(&self) -> Result<(), ConfigError> {
        if self.bucket.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.bucket",
                message: "s3 storage needs a bucket".into(),
            });
        }
        if self.region.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.region",
                message: "s3 storage needs a region (us-east-1 for most S3-compatible servers)"
                    .into(),
            });
        }
        for (key, url) in [
            ("storage.endpoint", &self.endpoint),
            ("storage.public_endpoint", &self.public_endpoint),
        ] {
            if let Some(url) = url
                && !url.starts_with("http://")
                && !url.starts_with("https://")
            {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must start with http:// or https://".into(),
                });
            }
        }
        // SigV4 presigned URLs live at most seven days.
        if !(1..=604_800).contains(&self.presign_expiry_seconds) {
            return Err(ConfigError::Invalid {
                key: "storage.presign_expiry_seconds",
                message: "must be between 1 and 604800 (seven days)".into(),
            });
        }
        self.s3_credentials().map(|_| ())
    }
}

/// Registry behaviour switches.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Whether manifest, tag and blob deletes are allowed (405 `UNSUPPORTED` otherwise).
    pub delete_enabled: bool,
    /// Page size of tag and catalog listings when the client gives no `n`.
    pub default_page_size: u32,
    /// Largest page a client may ask for; larger `n` are clamped and continue through `Link`.
    pub max_page_size: u32,
    /// An upload session that has not received a chunk for this many seconds is abandoned: the
    /// purge job deletes it and its stored parts. 0 turns the purge off.
    pub upload_max_age_seconds: u64,
    /// How often a node looks for abandoned uploads. One node at a time does the work (a lease in
    /// the metadata store), so several nodes do not purge twice.
    pub upload_purge_interval_seconds: u64,
    /// Most chunks (stored parts) one upload session may hold; a chunk beyond it answers 400
    /// `BLOB_UPLOAD_INVALID`. At most [`MAX_UPLOAD_PARTS`], S3's own limit on the parts of a
    /// multipart upload, which joining the parts must stay within.
    pub max_upload_parts: u64,
    /// Most upload sessions one user may have recently active (advanced within
    /// `active_upload_window_seconds`); starting one more answers 429 `TOOMANYREQUESTS` with
    /// `Retry-After`. 0 means no bound.
    pub max_active_uploads_per_user: u64,
    /// How long an upload session counts as active after it last advanced, for
    /// `max_active_uploads_per_user`.
    pub active_upload_window_seconds: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            delete_enabled: true,
            default_page_size: 1000,
            max_page_size: 10_000,
            upload_max_age_seconds: 86_400,
            upload_purge_interval_seconds: 600,
            max_upload_parts: MAX_UPLOAD_PARTS,
            max_active_uploads_per_user: 1000,
            active_upload_window_seconds: 3600,
        }
    }
}

/// The largest `registry.max_upload_parts`: S3 joins at most this many parts into one object.
pub const MAX_UPLOAD_PARTS: u64 = 10_000;

/// Size limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest manifest accepted, in bytes (413 above it).
    pub manifest_max_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            manifest_max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Filter directives, e.g. `info` or `aerugo=debug,tower_http=info`.
    pub level: String,
}

/// Cache settings: moka per node, and optionally Redis shared by the nodes with invalidation over
/// Redis pub/sub. See docs/cache.md for what is cached and the staleness bound.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Redis URL (`redis://host:port/db`). Unset: moka only (embedded mode, one node).
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key and of the invalidation channel; nodes of one cluster share it.
    /// The metadata database's cluster id is appended (`<key_prefix>:<cluster id>:`), so
    /// deployments with different databases never share entries, whatever their prefix.
    pub key_prefix: String,
    /// Weight budget of the manifest cache in bytes (entries weigh their payload size).
    pub manifest_max_bytes: u64,
    /// Most entries of each of the other caches (tags, authorization facts, blob metadata), per
    /// node. Each entry costs about 300 bytes; the default keeps a node's hot set small (a 100,000
    /// repository catalog run peaks at 47 MiB RSS instead of 76 MiB with 100,000). Raise it when
    /// more than this many repositories, tags or blobs are hot at once.
    pub max_entries: u64,
    /// Lifetime of cached manifests (immutable by digest; dropped on delete), in seconds.
    pub manifest_ttl_seconds: u64,
    /// Lifetime of tag → digest entries, in seconds: the staleness bound when an invalidation
    /// is lost.
    pub tag_ttl_seconds: u64,
    /// Lifetime of authorization facts (visibility, roles, grants), in seconds.
    pub facts_ttl_seconds: u64,
    /// Lifetime of blob metadata for HEAD and GET, in seconds.
    pub blob_ttl_seconds: u64,
    /// Lifetime of mutable local entries while the invalidation channel is down, in seconds.
    pub disconnected_ttl_seconds: u64,
    /// Timeout of one Redis command, in milliseconds; a slower answer counts as a miss.
    pub redis_timeout_ms: u64,
    /// Consecutive Redis failures that open the circuit breaker (Redis is then skipped).
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe is let through, in milliseconds.
    pub breaker_open_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "aerugo".into(),
            manifest_max_bytes: 64 * 1024 * 1024,
            max_entries: 10_000,
            manifest_ttl_seconds: 3600,
            tag_ttl_seconds: 30,
            facts_ttl_seconds: 10,
            blob_ttl_seconds: 300,
            disconnected_ttl_seconds: 2,
            redis_timeout_ms: 250,
            breaker_failures: 3,
            breaker_open_ms: 2000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or merging failed; the message names the key.
    #[error("configuration error: {0}")]
    Load(String),
    /// A value is out of range.
    #[error("configuration error: {key}: {message}")]
    Invalid {
        /// The key, e.g. `limits.manifest_max_bytes`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Where a configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    /// SQLite at this path.
    Sqlite(PathBuf),
    /// PostgreSQL or CockroachDB.
    Postgres,
}

impl Config {
    /// Loads the configuration: defaults, then `file` (if given), then `AERUGO_*__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only `AERUGO_<SECTION>__<KEY>` variables are configuration; others with the prefix
        // (`AERUGO_LOG`, test settings) are not, and must not trip the unknown-key check.
        let env = Env::prefixed("AERUGO_")
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        figment = figment.merge(env);
        let config: Config = figment.extract().map_err(|e| {
            let mut parts = Vec::new();
            for err in e {
                let key = err.path.join(".");
                let source = err
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref().map(|s| s.to_string()))
                    .unwrap_or_default();
                let kind = err.kind.to_string();
                let mut msg = if key.is_empty() {
                    kind
                } else {
                    format!("{key}: {kind}")
                };
                if !source.is_empty() {
                    msg.push_str(&format!(" (from {source})"));
                }
                parts.push(msg);
            }
            ConfigError::Load(parts.join("; "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.database_kind()?;
        if self.storage.kind == StorageType::S3 {
            self.storage.validate_s3()?;
        }
        if self.limits.manifest_max_bytes < 4 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "limits.manifest_max_bytes",
                message: "must be at least 4194304 (4 MiB), the spec's minimum".into(),
            });
        }
        if self.registry.default_page_size == 0 || self.registry.max_page_size == 0 {
            return Err(ConfigError::Invalid {
                key: "registry.default_page_size",
                message: "page sizes must be positive".into(),
            });
        }
        if self.registry.upload_purge_interval_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "registry.upload_purge_interval_seconds",
                message: "must be positive (turn the purge off with upload_max_age_seconds = 0)"
                    .into(),
            });
        }
        if self.jobs.poll_interval_ms == 0
            || self.jobs.claim_lease_seconds == 0
            || self.jobs.batch_size == 0
            || self.jobs.max_attempts == 0
        {
            return Err(ConfigError::Invalid {
                key: "jobs",
                message: "poll_interval_ms, claim_lease_seconds, batch_size and max_attempts must \
                          be positive"
                    .into(),
            });
        }
        if !(1..=MAX_UPLOAD_PARTS).contains(&self.registry.max_upload_parts) {
            return Err(ConfigError::Invalid {
                key: "registry.max_upload_parts",
                message: format!("must be between 1 and {MAX_UPLOAD_PARTS} (S3's part limit)"),
            });
        }
        if self.registry.max_active_uploads_per_user > 0
            && self.registry.active_upload_window_seconds == 0
        {
            return Err(ConfigError::Invalid {
                key: "registry.active_upload_window_seconds",
                message:
                    "must be positive (turn the bound off with max_active_uploads_per_user = 0)"
                        .into(),
            });
        }
        if self.server.request_timeout_seconds == 0 || self.server.body_idle_timeout_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "server.request_timeout_seconds",
                message: "timeouts must be positive".into(),
            });
        }
        if self.auth.token_ttl_seconds < 60 {
            return Err(ConfigError::Invalid {
                key: "auth.token_ttl_seconds",
                message: "must be at least 60".into(),
            });
        }
        if self.cache.redis_timeout_ms == 0 || self.cache.breaker_failures == 0 {
            return Err(ConfigError::Invalid {
                key: "cache.redis_timeout_ms",
                message: "the Redis timeout and breaker threshold must be positive".into(),
            });
        }
        if !matches!(self.auth.default_visibility.as_str(), "private" | "public") {
            return Err(ConfigError::Invalid {
                key: "auth.default_visibility",
                message: "must be private or public".into(),
            });
        }
        if self.auth.login_max_failures == 0
            || self.auth.login_max_failures_per_address == 0
            || self.auth.login_window_seconds == 0
        {
            return Err(ConfigError::Invalid {
                key: "auth.login_max_failures",
                message: "login throttling values must be positive".into(),
            });
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "database.max_connections",
                message: "must be positive".into(),
            });
        }
        let url = &self.server.public_url;
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(ConfigError::Invalid {
                key: "server.public_url",
                message: "must start with http:// or https://".into(),
            });
        }
        Ok(())
    }

    /// Which metadata backend `database.url` selects.
    pub fn database_kind(&self) -> Result<DatabaseKind, ConfigError> {
        let url = &self.database.url;
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "database.url",
                    message: "sqlite:// needs a path, e.g. sqlite://./aerugo-data/aerugo.db".into(),
                });
            }
            Ok(DatabaseKind::Sqlite(PathBuf::from(path)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else {
            Err(ConfigError::Invalid {
                key: "database.url",
                message: format!(
                    "unsupported scheme in {:?}; use sqlite://<path> or postgres://…",
                    redact_url(url)
                ),
            })
        }
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut copy = self.clone();
        copy.database.url = redact_url(&copy.database.url);
        toml::to_string_pretty(&copy).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

#[cfg(test)]
mod deployment;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.server.listen_address.to_string(), "0.0.0.0:8080");
        // S3 joins at most 10,000 parts; the default is that bound and nothing above it is valid.
        assert_eq!(c.registry.max_upload_parts, 10_000);
        let mut over = Config::default();
        over.registry.max_upload_parts = 10_001;
        assert!(over.validate().is_err());
        assert_eq!(
            c.database_kind().unwrap(),
            DatabaseKind::Sqlite(PathBuf::from("./aerugo-data/aerugo.db"))
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
        // Every form a password can take: raw `/`, `?`, `@` or `:` in it, percent-encoded, as a
        // query parameter (name or value encoded), after a query value holding `@`.
        let cases = [
            ("postgres://u:pa/ss@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u:p?a=b@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss:w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p%2Fs%40s@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=s3cret",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://h/db?sslmode=require&password=s3cret&application_name=a",
                "postgres://h/db?sslmode=require&password=***&application_name=a",
            ),
            (
                "postgres://h/db?pass%77ord=s3cret",
                "postgres://h/db?pass%77ord=***",
            ),
            (
                "postgres://h/db?PASSWORD=s3cret",
                "postgres://h/db?PASSWORD=***",
            ),
            (
                "postgres://h/db?sslpassword=s3cret",
                "postgres://h/db?sslpassword=***",
            ),
            ("postgres://u@h/db?password=s3@cret", "postgres://***@cret"),
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("host=h password=s3cret", "***"),
        ];
        for (url, want) in cases {
            let got = redact_url(url);
            assert_eq!(got, want, "{url}");
            for secret in ["pa/ss", "s3cret", "p%2Fs", "ss:w", "p?a"] {
                assert!(!got.contains(secret), "{url} -> {got}");
            }
        }
        let mut c = Config::default();
        c.database.url = "postgres://u:hunter2@h/db".into();
        c.auth.admin_password = Some(Secret::new("hunter2"));
        assert!(!c.to_redacted_toml().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn file_and_env_layers() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "a.toml",
                "[server]\nlisten_address = \"127.0.0.1:5000\"\n[limits]\nmanifest_max_bytes = 8388608\n",
            )?;
            jail.set_env("AERUGO_SERVER__LISTEN_ADDRESS", "127.0.0.1:6000");
            jail.set_env("AERUGO_LOG", "debug");
            let c = Config::load(Some(Path::new("a.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen_address.to_string(), "127.0.0.1:6000");
            assert_eq!(c.limits.manifest_max_bytes, 8 * 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_come_as_a_list_or_comma_separated() {
        assert!(Config::default().server.trusted_proxies.is_empty());
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "a.toml",
                "[server]\ntrusted_proxies = [\"10.0.0.1\", \"192.168.0.0/16\"]\n",
            )?;
            let c = Config::load(Some(Path::new("a.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.server.trusted_proxies.0.len(), 2);
            // The printed configuration loads back as the same list.
            let printed = c.to_redacted_toml();
            assert!(printed.contains("\"10.0.0.1/32\""), "{printed}");
            jail.create_file("b.toml", &printed)?;
            let again = Config::load(Some(Path::new("b.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(again.server.trusted_proxies, c.server.trusted_proxies);
            jail.set_env(
                "AERUGO_SERVER__TRUSTED_PROXIES",
                "127.0.0.1/32, 10.0.0.0/8,fd00::/8",
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let t = &c.server.trusted_proxies;
            assert_eq!(t.0.len(), 3);
            assert!(t.contains("10.1.2.3".parse().unwrap()));
            assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
            assert!(t.contains("fd00::5".parse().unwrap()));
            assert!(!t.contains("127.0.0.2".parse().unwrap()));
            assert!(!t.contains("192.0.2.1".parse().unwrap()));
            jail.set_env("AERUGO_SERVER__TRUSTED_PROXIES", "172.18.0.4");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.server.trusted_proxies.0.len(), 1);
            assert!(
                c.server
                    .trusted_proxies
                    .contains("172.18.0.4".parse().unwrap())
            );
            jail.set_env("AERUGO_SERVER__TRUSTED_PROXIES", "10.0.0.0/8,nginx");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("trusted_proxies") && err.contains("nginx"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[server]\nlisten_adress = \"x\"\n")?;
            let err = Config::load(Some(Path::new("a.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_adress"), "{err}");
            jail.create_file("b.toml", "")?;
            jail.set_env("AERUGO_SERVER__LISTEN_ADDRESS", "not-an-address");
            let err = Config::load(Some(Path::new("b.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("listen_address"), "{err}");
            jail.set_env("AERUGO_SERVER__LISTEN_ADDRESS", "127.0.0.1:1");
            jail.set_env("AERUGO_STORAGE__TYPE", "floppy");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("storage.type"), "{err}");
            jail.set_env("AERUGO_STORAGE__TYPE", "s3");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("storage.bucket"), "{err}");
            jail.set_env("AERUGO_STORAGE__BUCKET", "b");
            jail.set_env("AERUGO_STORAGE__ENDPOINT", "minio:9000");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("storage.endpoint"), "{err}");
            jail.set_env("AERUGO_STORAGE__ENDPOINT", "http://minio:9000");
            jail.set_env("AERUGO_STORAGE__PRESIGN_EXPIRY_SECONDS", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("storage.presign_expiry_seconds"), "{err}");
            jail.set_env("AERUGO_STORAGE__PRESIGN_EXPIRY_SECONDS", "600");
            jail.set_env("AWS_ACCESS_KEY_ID", "");
            jail.set_env("AWS_SECRET_ACCESS_KEY", "");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("storage.access_key_id"), "{err}");
            jail.set_env("AERUGO_STORAGE__ACCESS_KEY_ID", "AKIDEXAMPLE");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("storage.secret_access_key"), "{err}");
            jail.set_env("AWS_SECRET_ACCESS_KEY", "from-aws-env");
            let c = Config::load(None).unwrap();
            assert_eq!(
                c.storage
                    .s3_credentials()
                    .unwrap()
                    .secret_access_key
                    .expose(),
                "from-aws-env"
            );
            jail.set_env("AERUGO_STORAGE__SECRET_ACCESS_KEY", "s3cr3t-value");
            let c = Config::load(None).unwrap();
            let creds = c.storage.s3_credentials().unwrap();
            assert_eq!(creds.access_key_id, "AKIDEXAMPLE");
            assert_eq!(creds.secret_access_key.expose(), "s3cr3t-value");
            assert!(c.storage.redirect);
            assert_eq!(c.storage.presign_expiry_seconds, 600);
            assert!(!c.to_redacted_toml().contains("s3cr3t-value"));
            assert!(!format!("{c:?}").contains("s3cr3t-value"));
            jail.set_env("AERUGO_STORAGE__TYPE", "fs");
            jail.set_env("AERUGO_DATABASE__URL", "mysql://x");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("database.url"), "{err}");
            Ok(())
        });
    }
}
