//! A stand-in for `aerugo serve`, used by the testkit's own tests of the
//! `node` module so that process handling is tested without the real registry.
//!
//! It honours the same contract as the real server: it is started as
//! `<binary> serve`, listens on `AERUGO_SERVER__LISTEN_ADDRESS`, answers
//! `GET /readyz` with `200 OK` and exits with status 0 on `SIGTERM`. At start it
//! prints every `AERUGO_*` variable it received, sorted, one per line.
//!
//! `FAKE_AERUGO_MODE` selects a misbehaviour:
//! - `crash`: print an error and exit with status 3 without listening.
//! - `port-taken-once`: on the first start in a data directory, fail as if the
//!   port were taken; afterwards behave normally.
//! - `ignore-term`: keep running on `SIGTERM`.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        std::env::args().nth(1).as_deref() == Some("serve"),
        "usage: fake-aerugo serve"
    );
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AERUGO_"))
        .collect();
    vars.sort();
    for (key, value) in &vars {
        println!("{key}={value}");
    }

    let mode = std::env::var("FAKE_AERUGO_MODE").unwrap_or_default();
    let storage = PathBuf::from(std::env::var("AERUGO_STORAGE__ROOT")?);
    let data_dir = storage.parent().map(PathBuf::from).unwrap_or_default();
    match mode.as_str() {
        "crash" => {
            eprintln!("fake-aerugo: boom");
            std::process::exit(3);
        }
        "port-taken-once" => {
            let marker = data_dir.join("fake-port-taken");
            if !marker.exists() {
                std::fs::write(&marker, b"")?;
                eprintln!("Error: Address already in use (os error 98)");
                std::process::exit(1);
            }
        }
        _ => {}
    }

    let mut terminate = signal(SignalKind::terminate())?;
    let listener = TcpListener::bind(std::env::var("AERUGO_SERVER__LISTEN_ADDRESS")?).await?;
    println!("fake-aerugo: listening on {}", listener.local_addr()?);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(answer(stream));
            }
            _ = terminate.recv() => {
                if mode == "ignore-term" {
                    println!("fake-aerugo: ignoring SIGTERM");
                } else {
                    println!("fake-aerugo: shutting down");
                    return Ok(());
                }
            }
        }
    }
}

/// Answers one HTTP/1.1 request and closes the connection.
async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..read]);
    }
    let ready = request.starts_with(b"GET /readyz ");
    let status = if ready { "200 OK" } else { "404 Not Found" };
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
