//! Logging: a tracing subscriber writing text or JSON lines to stderr.
//!
//! The filter comes from `log.level`, overridable by `AERUGO_LOG` or `RUST_LOG`. Secrets never reach
//! logs: configuration is logged redacted and request bodies are never logged.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; later calls are no-ops.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("AERUGO_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| config.level.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
