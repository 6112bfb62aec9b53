//! Authentication use cases: password and API-key logins (throttled per user and address, per
//! address and per account: `service::throttle`),
//! registry tokens for `/auth/token`, refresh tokens for `docker login`, management API tokens,
//! and the first-start site admin.
//!
//! Secrets are only ever compared as hashes (argon2id for passwords, SHA-256 for high-entropy
//! API keys and refresh tokens) and never logged.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::jwt::{Claims, KeySet, Origin};
use crate::auth::scope::Scope;
use crate::auth::secret::{self, SecretKind};
use crate::auth::{password, permission::Permission};
use crate::meta::identity::{
    ApiKeyRow, LoginAdmission, LoginLimit, NewUser, RefreshTokenRow, UserRow,
};

use super::access::{Identity, KeyRestriction, KeyScope, Principal, RefreshOrigin};
use super::caching::{CachedSubject, RegistryCaches, SubjectKey, SubjectUser};
use super::throttle;
use super::{Error, Registry, Result};

/// Token settings the use cases need.
#[derive(Clone)]
pub struct TokenSettings {
    /// Signing and verifying keys.
    pub keys: Arc<KeySet>,
    /// `iss` of minted tokens.
    pub issuer: String,
    /// The registry's service name (registry token audience).
    pub service: String,
    /// Token lifetime.
    pub ttl_seconds: u64,
    /// Refresh token lifetime.
    pub refresh_ttl_seconds: u64,
    /// Failed logins allowed per username and address in a window (also where the account's
    /// delay starts).
    pub login_max_failures: u32,
    /// Failed logins allowed per address in a window, all usernames together.
    pub login_max_failures_per_address: u32,
    /// The window, in seconds.
    pub login_window_seconds: u64,
    /// Whether anyone may sign up.
    pub self_signup: bool,
}

impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("issuer", &self.issuer)
            .field("service", &self.service)
            .field("ttl_seconds", &self.ttl_seconds)
            .finish_non_exhaustive()
    }
}

/// A minted token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Unix seconds when it was issued.
    pub issued_at: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_millis() -> i64 {
    i64::try_from(now_secs())
        .unwrap_or(i64::MAX)
        .saturating_mul(1000)
}

/// Milliseconds since the epoch, to the millisecond (for Retry-After).
fn now_millis_exact() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn identity_of(user: &UserRow) -> Identity {
    Identity {
        user_id: user.id.clone(),
        username: user.username.clone(),
        is_admin: user.is_admin,
        key: None,
        generation: user.credential_generation,
        refresh: None,
    }
}

/// An API key's restriction, or `None` when a stored field is unknown (fail closed).
fn key_restriction(
    id: &str,
    scope_kind: &str,
    scope_name: &str,
    permission: &str,
) -> Option<KeyRestriction> {
    // A scope this node does not know (written by a newer version, or by hand) grants
    // nothing: the key is refused rather than widened to "all".
    let Some(scope) = KeyScope::from_stored(scope_kind, scope_name) else {
        tracing::warn!(key.id = %id, scope = %scope_kind, "API key with an unknown scope refused");
        return None;
    };
    Some(KeyRestriction {
        id: id.to_owned(),
        scope,
        cap: permission.parse::<Permission>().ok()?,
    })
}

/// What a token minted for `identity` carries to be re-checked later.
fn origin_of(identity: &Identity) -> Origin {
    Origin {
        uid: Some(identity.user_id.clone()),
        cgen: Some(identity.generation),
        akid: identity.key.as_ref().map(|k| k.id.clone()),
        rtid: identity.refresh.as_ref().map(|r| r.id.clone()),
    }
}

/// The audience of management API tokens: never accepted by the registry API, and vice versa.
fn api_audience(service: &str) -> String {
    format!("{service}/api")
}

impl Registry {
    fn tokens(&self) -> &TokenSettings {
        &self.tokens
    }

    /// Runs argon2 work on the blocking pool, at most one job per core at a time. Each job holds
    /// 19 MiB of memory, so a burst of logins (64 clients fetching tokens at once) queues here
    /// instead of growing the process by a gigabyte and starving the other requests of CPU.
    pub(crate) async fn password_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        // The permit moves into the job: a request dropped meanwhile (a timeout) does not free
        // the slot while its argon2 run goes on.
        let permit = self
            .password_gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(e.into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| Error::Internal(e.into()))
    }

    /// Hashes a password with argon2id.
    pub(crate) async fn hash_password(&self, pw: &str) -> Result<String> {
        let pw = pw.to_owned();
        self.password_work(move || password::hash_password(&pw))
            .await?
            .map_err(|e| Error::Internal(e.into()))
    }

    /// Whether `pw` is the password of `user` (of the stored hash `hash`, when there is a user).
    /// Every check is counted in `aerugo_password_checks_total`.
    pub(crate) async fn check_password(&self, pw: &str, hash: Option<&str>) -> Result<bool> {
        let (pw, hash) = (pw.to_owned(), hash.map(str::to_owned));
        self.password_work(move || {
            metrics::counter!("aerugo_password_checks_total").increment(1);
            match hash {
                Some(h) => password::verify_password(&pw, &h),
                None => {
                    // Unknown users take as long as known ones: no enumeration by timing.
                    password::dummy_verify(&pw);
                    false
                }
            }
        })
        .await
    }

    /// Authenticates `username` with a password or an API key secret, from the client address
    /// `client` (`None`: unknown). Attempts are throttled before anything is checked (see
    /// `service::throttle`): past a limit the caller gets `TooManyRequests`, whatever the
    /// credentials.
    pub async fn login(
        &self,
        username: &str,
        secret_or_password: &str,
        client: Option<IpAddr>,
    ) -> Result<Identity> {
        // A credential checked in the last minute is not checked again (password changes and
        // revocations take effect within that minute).
        let cache_key: [u8; 32] = {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            h.update(username.as_bytes());
            h.update([0u8]);
            h.update(secret_or_password.as_bytes());
            h.finalize().into()
        };
        // Taken before the check reads anything: a password change or key revocation that
        // clears the cache meanwhile makes this result unservable to anyone else.
        let read_at = self.logins.generation();
        if let Some(identity) = self.logins.get(&cache_key) {
            return Ok(identity);
        }
        // The same credential arriving many times at once is checked once; the others wait and
        // find it cached (or are counted one by one when it was wrong).
        let _flight = self.throttle.flight(cache_key).await;
        if let Some(identity) = self.logins.get(&cache_key) {
            return Ok(identity);
        }
        let identity = self
            .login_uncached(username, secret_or_password, client)
            .await?;
        #[cfg(test)]
        self.caches.login_checked.point().await;
        self.logins.insert(cache_key, identity.clone(), read_at);
        Ok(identity)
    }

    async fn login_uncached(
        &self,
        username: &str,
        secret_or_password: &str,
        client: Option<IpAddr>,
    ) -> Result<Identity> {
        let t = self.tokens();
        let window_ms = i64::try_from(t.login_window_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let keys = throttle::Keys::new(username, client);
        let admission = self
            .identity
            .begin_login_attempt(
                &[
                    LoginLimit {
                        key: &keys.address,
                        max: t.login_max_failures_per_address,
                    },
                    LoginLimit {
                        key: &keys.pair,
                        max: t.login_max_failures,
                    },
                ],
                &keys.account,
                window_ms,
            )
            .await?;
        let account_failures = match admission {
            LoginAdmission::Refused { until_ms } => {
                metrics::counter!("aerugo_login_attempts_total", "outcome" => "throttled")
                    .increment(1);
                let left_ms = until_ms.saturating_sub(now_millis_exact()).max(0);
                return Err(Error::TooManyRequests {
                    retry_after_secs: u64::try_from(left_ms).unwrap_or(0).div_ceil(1000).max(1),
                });
            }
            LoginAdmission::Admitted { soft_failures } => soft_failures,
        };
        self.prune_login_failures(window_ms);
        let delay = throttle::account_delay(account_failures, t.login_max_failures);
        if !delay.is_zero() {
            // Slowed, never refused: an attacker elsewhere cannot lock the account out.
            tokio::time::sleep(delay).await;
        }
        let result = match secret::parse(secret_or_password) {
            Some((SecretKind::ApiKey, id)) => self.check_api_key(secret_or_password, id).await?,
            _ => {
                let user = self.identity.user_by_name(username).await?;
                if self
                    .check_password(
                        secret_or_password,
                        user.as_ref().map(|u| u.password_hash.as_str()),
                    )
                    .await?
                {
                    user.as_ref().map(identity_of)
                } else {
                    None
                }
            }
        };
        match result {
            Some(identity) if identity.username == username => {
                metrics::counter!("aerugo_login_attempts_total", "outcome" => "succeeded")
                    .increment(1);
                self.identity
                    .forgive_login_attempt(&keys.pair, &[&keys.address, &keys.account])
                    .await?;
                Ok(identity)
            }
            _ => {
                metrics::counter!("aerugo_login_attempts_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(
                    user.name = %username,
                    client = %client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
                    account_failures = account_failures + 1,
                    "login failed"
                );
                Err(Error::Unauthorized)
            }
        }
    }

    /// Deletes ended throttle windows, every [`throttle::PRUNE_EVERY`] attempts on this node, in
    /// a background task bounded to [`throttle::PRUNE_BATCH`] rows (so `login_failures` never
    /// grows beyond the counters of live windows). The jobs runner may take this over later.
    fn prune_login_failures(&self, window_ms: i64) {
        let Some(guard) = self.throttle.due_for_prune() else {
            return;
        };
        let identity = self.identity.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match identity
                .prune_login_failures(window_ms, throttle::PRUNE_BATCH)
                .await
            {
                Ok(n) => {
                    metrics::counter!("aerugo_login_throttle_pruned_total").increment(n);
                }
                Err(e) => tracing::warn!(error = %e, "pruning login throttle counters failed"),
            }
        });
    }

    /// Verifies an API key secret; the identity it acts as, or `None`.
    async fn check_api_key(&self, token: &str, id: &str) -> Result<Option<Identity>> {
        let Some(key) = self.identity.api_key(id).await? else {
            return Ok(None);
        };
        if !secret::verify(token, &key.secret_hash)
            || key.revoked_at.is_some()
            || key.expires_at.is_some_and(|e| e <= now_millis())
        {
            return Ok(None);
        }
        let Some(user) = self.identity.user_by_id(&key.user_id).await? else {
            return Ok(None);
        };
        let Some(restriction) =
            key_restriction(&key.id, &key.scope_kind, &key.scope_name, &key.permission)
        else {
            return Ok(None);
        };
        let mut identity = identity_of(&user);
        identity.key = Some(restriction);
        Ok(Some(identity))
    }

    /// Mints a registry token for `identity` (or an anonymous one) with what it may have of
    /// `scopes`.
    pub async fn registry_token(
        &self,
        identity: Option<&Identity>,
        scopes: &[Scope],
    ) -> Result<IssuedToken> {
        let access = self.grant_scopes(identity, scopes).await?;
        let t = self.tokens();
        let now = now_secs();
        let subject = identity.map_or("", |i| i.username.as_str());
        // Nothing minted from a refresh token outlives it.
        let ttl = identity
            .and_then(|i| i.refresh.as_ref())
            .map_or(t.ttl_seconds, |r| {
                let left = u64::try_from(r.expires_at / 1000)
                    .unwrap_or(0)
                    .saturating_sub(now);
                left.min(t.ttl_seconds)
            });
        let mut claims = Claims::new(&t.issuer, subject, &t.service, access, now, ttl);
        if let Some(identity) = identity {
            claims.origin = origin_of(identity);
        }
        let token = t
            .keys
            .mint(&claims)
            .map_err(|e| Error::Internal(e.into()))?;
        Ok(IssuedToken {
            token,
            expires_in: ttl,
            issued_at: now,
        })
    }

    /// The caller behind a registry token presented to `/v2`: its signature and expiry are
    /// verified, then the identity it was minted for is re-checked against current facts (the
    /// user still exists, their password has not changed since, the API key or refresh token it
    /// came from is neither revoked nor expired). A dead token is `Unauthorized`.
    pub async fn token_principal(&self, token: &str) -> Result<Principal> {
        let claims = self.verify_registry_token(token)?;
        let identity = self.current_identity(&claims).await?;
        Ok(Principal::Token {
            identity,
            access: claims.access,
        })
    }

    /// The identity a token's claims stand for now: `None` for an anonymous token, `Unauthorized`
    /// when the subject or the credential the token was minted from is gone, revoked, expired or
    /// from before a password change. Reads the subject cache, never the database when warm.
    async fn current_identity(&self, claims: &Claims) -> Result<Option<Identity>> {
        let o = &claims.origin;
        let Some(uid) = o.uid.as_deref() else {
            // Tokens without an origin are anonymous ones; a named subject without one (minted
            // before origins existed) cannot be re-checked, so it is refused.
            return if claims.sub.is_empty() {
                Ok(None)
            } else {
                Err(Error::Unauthorized)
            };
        };
        let (key_id, refresh_id) = (o.akid.as_deref(), o.rtid.as_deref());
        let subject = self
            .caches
            .subjects
            .get_or_load(
                &RegistryCaches::subject_key(uid, key_id, refresh_id),
                || self.load_subject(uid, key_id, refresh_id),
            )
            .await?
            .ok_or(Error::Unauthorized)?;
        let user = subject.user.as_ref().ok_or(Error::Unauthorized)?;
        if user.username != claims.sub {
            return Err(Error::Unauthorized);
        }
        let now = now_millis();
        let key = match key_id {
            // An API key is its own credential: it lives until it is revoked or expires,
            // whatever happens to the owner's password.
            Some(id) => {
                let k = subject.key.as_ref().ok_or(Error::Unauthorized)?;
                if k.revoked || k.user_id != uid || k.expires_at.is_some_and(|e| e <= now) {
                    return Err(Error::Unauthorized);
                }
                Some(
                    key_restriction(id, &k.scope_kind, &k.scope_name, &k.permission)
                        .ok_or(Error::Unauthorized)?,
                )
            }
            None => {
                if o.cgen != Some(user.generation) {
                    return Err(Error::Unauthorized);
                }
                None
            }
        };
        let refresh = match refresh_id {
            Some(id) => {
                let expires_at = subject.refresh_expires_at.ok_or(Error::Unauthorized)?;
                if expires_at <= now {
                    return Err(Error::Unauthorized);
                }
                Some(RefreshOrigin {
                    id: id.to_owned(),
                    expires_at,
                })
            }
            None => None,
        };
        Ok(Some(Identity {
            user_id: uid.to_owned(),
            username: user.username.clone(),
            is_admin: user.is_admin,
            key,
            generation: user.generation,
            refresh,
        }))
    }

    async fn load_subject(
        &self,
        uid: &str,
        key_id: Option<&str>,
        refresh_id: Option<&str>,
    ) -> Result<Option<CachedSubject>> {
        let user = self.identity.user_by_id(uid).await?.map(|u| SubjectUser {
            username: u.username,
            is_admin: u.is_admin,
            generation: u.credential_generation,
        });
        let key = match key_id {
            Some(id) => self.identity.api_key(id).await?.map(|k| SubjectKey {
                user_id: k.user_id,
                scope_kind: k.scope_kind,
                scope_name: k.scope_name,
                permission: k.permission,
                expires_at: k.expires_at,
                revoked: k.revoked_at.is_some(),
            }),
            None => None,
        };
        let refresh_expires_at = match refresh_id {
            Some(id) => self
                .identity
                .refresh_token(id)
                .await?
                .filter(|r| r.user_id == uid)
                .map(|r| r.expires_at),
            None => None,
        };
        Ok(Some(CachedSubject {
            user,
            key,
            refresh_expires_at,
        }))
    }

    /// Verifies a registry token presented to `/v2`.
    ///
    /// A token that verified recently is not verified again: its claims come from a short-lived
    /// cache keyed by the token's hash, as long as they have not expired.
    pub fn verify_registry_token(&self, token: &str) -> Result<Claims> {
        let key: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(token.as_bytes()).into()
        };
        let read_at = self.verified_tokens.generation();
        if let Some(claims) = self.verified_tokens.get(&key)
            && claims.exp > now_secs()
        {
            return Ok(claims);
        }
        let t = self.tokens();
        let claims = t
            .keys
            .verify(token, &t.issuer, &t.service)
            .map_err(|_| Error::Unauthorized)?;
        self.verified_tokens.insert(key, claims.clone(), read_at);
        Ok(claims)
    }

    /// The registry's service name, for challenges.
    pub fn service_name(&self) -> &str {
        &self.tokens().service
    }

    /// The public keys that verify this registry's tokens, as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.tokens().keys.jwks()
    }

    /// Issues a refresh token (`docker login`'s identity token) bound to `identity` and `service`.
    /// API-key logins get none: the key itself is the long-lived credential.
    pub async fn issue_refresh_token(
        &self,
        identity: &Identity,
        service: &str,
        client_id: &str,
    ) -> Result<Option<String>> {
        if identity.key.is_some() {
            return Ok(None);
        }
        // A refresh token never mints another: its chain ends when it does.
        if identity.refresh.is_some() {
            return Ok(None);
        }
        let s = secret::generate(SecretKind::RefreshToken);
        let ttl_ms = i64::try_from(self.tokens().refresh_ttl_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        self.identity
            .create_refresh_token(&RefreshTokenRow {
                id: s.id.clone(),
                user_id: identity.user_id.clone(),
                service: service.to_owned(),
                secret_hash: s.hash.clone(),
                expires_at: now_millis().saturating_add(ttl_ms),
                client_id: client_id.chars().take(200).collect(),
                created_at: 0,
                last_used_at: None,
            })
            .await?;
        Ok(Some(s.token))
    }

    /// Redeems a refresh token for the identity it was issued to.
    pub async fn redeem_refresh_token(&self, token: &str, service: &str) -> Result<Identity> {
        let Some((SecretKind::RefreshToken, id)) = secret::parse(token) else {
            return Err(Error::Unauthorized);
        };
        let row = self
            .identity
            .refresh_token(id)
            .await?
            .ok_or(Error::Unauthorized)?;
        if !secret::verify(token, &row.secret_hash)
            || row.expires_at <= now_millis()
            || row.service != service
        {
            return Err(Error::Unauthorized);
        }
        let user = self
            .identity
            .user_by_id(&row.user_id)
            .await?
            .ok_or(Error::Unauthorized)?;
        self.identity
            .touch_refresh_token(&row.id, now_millis())
            .await?;
        let mut identity = identity_of(&user);
        identity.refresh = Some(RefreshOrigin {
            id: row.id,
            expires_at: row.expires_at,
        });
        Ok(identity)
    }

    /// Mints a management API token for `identity`. API-key logins get none: a token carries no
    /// key restriction, so minting one would turn a scoped key into the owner's full rights; the
    /// key itself is the Bearer credential.
    pub fn api_token(&self, identity: &Identity) -> Result<IssuedToken> {
        if identity.key.is_some() {
            return Err(Error::Denied);
        }
        let t = self.tokens();
        let now = now_secs();
        let mut claims = Claims::new(
            &t.issuer,
            &identity.username,
            &api_audience(&t.service),
            Vec::new(),
            now,
            t.ttl_seconds,
        );
        claims.origin = origin_of(identity);
        let token = t
            .keys
            .mint(&claims)
            .map_err(|e| Error::Internal(e.into()))?;
        Ok(IssuedToken {
            token,
            expires_in: t.ttl_seconds,
            issued_at: now,
        })
    }

    /// Resolves a management API bearer credential: an API key secret or an API token.
    pub async fn authenticate_bearer(&self, credential: &str) -> Result<Identity> {
        if let Some((SecretKind::ApiKey, id)) = secret::parse(credential) {
            return self
                .check_api_key(credential, id)
                .await?
                .ok_or(Error::Unauthorized);
        }
        let t = self.tokens();
        let claims = t
            .keys
            .verify(credential, &t.issuer, &api_audience(&t.service))
            .map_err(|_| Error::Unauthorized)?;
        // The user must still exist and not have changed their password since (API tokens are
        // minted from passwords only, so they carry neither a key nor a refresh token).
        if claims.origin.akid.is_some() || claims.origin.rtid.is_some() {
            return Err(Error::Unauthorized);
        }
        self.current_identity(&claims)
            .await?
            .ok_or(Error::Unauthorized)
    }

    /// Creates the site admin `admin` when no user exists. Returns the password when it was
    /// generated (the caller shows it once), `None` when no user was created or the password was
    /// configured.
    pub async fn bootstrap_admin(&self, configured: Option<&str>) -> Result<Option<String>> {
        if self.identity.count_users().await? > 0 {
            return Ok(None);
        }
        let (password, generated) = match configured {
            Some(p) if !p.is_empty() => (p.to_owned(), false),
            _ => (
                secret::generate(SecretKind::ApiKey)
                    .token
                    .split('_')
                    .next_back()
                    .unwrap_or_default()
                    .to_owned(),
                true,
            ),
        };
        let hash = self.hash_password(&password).await?;
        let created = self
            .identity
            .create_user(&NewUser {
                username: "admin".into(),
                email: String::new(),
                password_hash: hash,
                is_admin: true,
                adopt: false,
            })
            .await?;
        Ok(if created.is_ok() && generated {
            Some(password)
        } else {
            None
        })
    }

    /// Stores a new API key for `identity`'s user and returns the row and the secret (shown once).
    pub(crate) async fn store_api_key(
        &self,
        mut row: ApiKeyRow,
    ) -> Result<Option<(ApiKeyRow, String)>> {
        let s = secret::generate(SecretKind::ApiKey);
        row.id = s.id.clone();
        row.secret_hash = s.hash.clone();
        row.created_at = now_millis();
        if self.identity.create_api_key(&row).await? {
            Ok(Some((row, s.token)))
        } else {
            Ok(None)
        }
    }
}
