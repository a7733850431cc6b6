use anyhow::Context;
use clap::Parser;
use rooms_cluster::process::{init_logging, shutdown_signal};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = gateway::Args::parse();
    init_logging(args.log_format);
    let (listen, admin_listen) = (args.listen, args.admin_listen);
    let config = args.into_config()?;
    let listeners = gateway::Listeners {
        http: TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?,
        admin: TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("binding {admin_listen}"))?,
    };
    gateway::run(listeners, config, shutdown_signal()).await?;
    Ok(())
}
