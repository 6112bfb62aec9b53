//! TLS to PostgreSQL/CockroachDB through rustls, configured the libpq way by `sslmode` and
//! `sslrootcert` in `database.url`.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, so [`TlsSettings::from_url`]
//! takes both parameters out of the URL before the driver parses it and builds the rustls
//! configuration they ask for:
//! - `disable`: plain TCP; `prefer` (libpq's default): TLS when the server offers it, without
//!   checking the certificate; `require`: TLS or no connection, certificate unchecked unless
//!   `sslrootcert` is given (then, as in libpq, it behaves as `verify-ca`);
//! - `verify-ca`: the certificate must chain to `sslrootcert` (or the system roots);
//! - `verify-full`: in addition the certificate must name the host the URL connects to.
//!
//! `sslrootcert=system` (or no `sslrootcert` with a verifying mode) uses the platform's roots.
//! The crypto provider is `ring`, chosen explicitly so that no process-wide default is needed.
//!
//! Must not depend on `service`, `storage` or `api`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when offered; certificate not checked.
    Prefer,
    /// TLS always; certificate not checked.
    Require,
    /// TLS always; the certificate chains to a trusted root.
    VerifyCa,
    /// TLS always; trusted chain and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            // `allow` (TLS only if the server insists) is closest to `prefer` here.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// What `sslmode`/`sslrootcert` ask for, and the URL without them (for the driver). Its `Debug`
/// shows the URL without its password.
pub(crate) struct TlsSettings {
    /// The effective mode (`require` with a root certificate is `verify-ca`).
    pub(crate) mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system`.
    pub(crate) root_cert: Option<String>,
    /// `database.url` without the two parameters.
    pub(crate) url: String,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .field("url", &crate::config::redact_url(&self.url))
            .finish()
    }
}

impl TlsSettings {
    /// Splits `sslmode` and `sslrootcert` off `url`. Without `sslmode`, the mode is `prefer`.
    pub(crate) fn from_url(url: &str) -> Result<Self, String> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = form_urlencoded::Serializer::new(String::new());
        let mut any_kept = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "sslmode" => mode = SslMode::parse(&v)?,
                "sslrootcert" => root_cert = Some(v.into_owned()),
                _ => {
                    kept.append_pair(&k, &v);
                    any_kept = true;
                }
            }
        }
        if mode == SslMode::Require && root_cert.is_some() {
            mode = SslMode::VerifyCa;
        }
        let url = if any_kept {
            format!("{base}?{}", kept.finish())
        } else {
            base.to_owned()
        };
        Ok(Self {
            mode,
            root_cert,
            url,
        })
    }

    /// The driver's mode: it only decides whether TLS is tried and whether it is mandatory.
    pub(crate) fn driver_mode(&self) -> DriverSslMode {
        match self.mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
        }
    }

    /// The connector for the pool.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let config = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS setup: {e}"))?;
                if self.mode == SslMode::VerifyFull {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(path) if path != "system" => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| format!("sslrootcert={path}: {e}"))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!("sslrootcert={path}: no usable certificate"));
                }
            }
            _ => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(
                        "no system root certificates found; set sslrootcert=<PEM file>".into(),
                    );
                }
            }
        }
        Ok(roots)
    }
}

/// `prefer`/`require`: encryption without authentication of the server (libpq's behaviour).
/// Handshake signatures are still checked, so the session key belongs to the certificate shown.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full web-PKI check, except that the certificate need not name the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url() {
        let s = TlsSettings::from_url(
            "postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(s.url, "postgres://u:p@h:5432/db?application_name=x");
        let s = TlsSettings::from_url("postgres://h/db").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert_eq!(s.url, "postgres://h/db");
        let s = TlsSettings::from_url("postgres://h/db?sslmode=require&sslrootcert=a").unwrap();
        assert_eq!(
            s.mode,
            SslMode::VerifyCa,
            "libpq: require + root cert = verify-ca"
        );
        assert_eq!(s.driver_mode(), DriverSslMode::Require);
        let err = TlsSettings::from_url("postgres://h/db?sslmode=bogus").unwrap_err();
        assert!(err.contains("sslmode=bogus"), "{err}");
    }
}
