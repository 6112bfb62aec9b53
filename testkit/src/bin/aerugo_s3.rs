//! `aerugo-s3`: runs the testkit's S3 server (s3s-fs, checking SigV4) until interrupted, for
//! manual runs and measurements. Prints the environment that points a node at it.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = aerugo_testkit::s3::S3Server::start()?;
    for (key, value) in server.node_env(aerugo_testkit::s3::DEFAULT_BUCKET) {
        println!("export {key}={value}");
    }
    tokio::signal::ctrl_c().await?;
    drop(server);
    Ok(())
}
