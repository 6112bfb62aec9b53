//! Authentication use cases: password and API-key logins (throttled per user and address),
//! registry tokens for `/auth/token`, refresh tokens for `docker login`, management API tokens,
//! and the first-start site admin.
//!
//! Secrets are only ever compared as hashes (argon2id for passwords, SHA-256 for high-entropy
//! API keys and refresh tokens) and never logged.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::jwt::{Claims, KeySet};
use crate::auth::scope::Scope;
use crate::auth::secret::{self, SecretKind};
use crate::auth::{password, permission::Permission};
use crate::meta::identity::{ApiKeyRow, NewUser, RefreshTokenRow, UserRow};

use super::access::{Identity, KeyRestriction, KeyScope};
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
    /// Failed logins allowed per window.
    pub login_max_failures: u32,
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

fn identity_of(user: &UserRow) -> Identity {
    Identity {
        user_id: user.id.clone(),
        username: user.username.clone(),
        is_admin: user.is_admin,
        key: None,
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
    pub(crate) async fn check_password(&self, pw: &str, hash: Option<&str>) -> Result<bool> {
        let (pw, hash) = (pw.to_owned(), hash.map(str::to_owned));
        self.password_work(move || match hash {
            Some(h) => password::verify_password(&pw, &h),
            None => {
                // Unknown users take as long as known ones: no enumeration by timing.
                password::dummy_verify(&pw);
                false
            }
        })
        .await
    }

    /// Authenticates `username` with a password or an API key secret. Failures are counted per
    /// user and client address; past the limit the caller gets `TooManyRequests`.
    pub async fn login(
        &self,
        username: &str,
        secret_or_password: &str,
        client: &str,
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
        client: &str,
    ) -> Result<Identity> {
        let t = self.tokens();
        let window_ms = i64::try_from(t.login_window_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let key = format!("{username}|{client}");
        if self.identity.login_failures(&key, window_ms).await? >= t.login_max_failures {
            return Err(Error::TooManyRequests {
                retry_after_secs: t.login_window_seconds,
            });
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
                self.identity.clear_login_failures(&key).await?;
                Ok(identity)
            }
            _ => {
                let n = self.identity.record_login_failure(&key, window_ms).await?;
                tracing::warn!(user.name = %username, client = %client, failures = n, "login failed");
                Err(Error::Unauthorized)
            }
        }
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
        let scope = match key.scope_kind.as_str() {
            "namespace" => KeyScope::Namespace(key.scope_name.clone()),
            "repository" => KeyScope::Repository(key.scope_name.clone()),
            _ => KeyScope::All,
        };
        let Ok(cap) = key.permission.parse::<Permission>() else {
            return Ok(None);
        };
        let mut identity = identity_of(&user);
        identity.key = Some(KeyRestriction {
            id: key.id,
            scope,
            cap,
        });
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
        let claims = Claims::new(&t.issuer, subject, &t.service, access, now, t.ttl_seconds);
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
    ) -> Result<Option<String>> {
        if identity.key.is_some() {
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
        Ok(identity_of(&user))
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
        let claims = Claims::new(
            &t.issuer,
            &identity.username,
            &api_audience(&t.service),
            Vec::new(),
            now,
            t.ttl_seconds,
        );
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
        let user = self
            .identity
            .user_by_name(&claims.sub)
            .await?
            .ok_or(Error::Unauthorized)?;
        Ok(identity_of(&user))
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
            })
            .await?;
        Ok(if created.is_some() && generated {
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
