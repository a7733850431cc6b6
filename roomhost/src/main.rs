use anyhow::Context;
use clap::Parser;
use rooms_cluster::process::{init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = roomhost::Args::parse();
    init_logging(args.log_format);
    let listen = args.listen;
    let config = args.into_config()?;
    let store = roomhost::open_store(&config).await.context("opening the store")?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    roomhost::run(listener, config, store, shutdown_signal()).await?;
    Ok(())
}
