use anyhow::Context;
use clap::Parser;
use rooms_server::{
    check::{check_config, config_or_exit},
    shutdown,
};

fn main() -> anyhow::Result<()> {
    let args = gateway::Args::parse();
    let runtime = rooms_server::runtime::build(args.worker_threads).context("starting tokio")?;
    runtime.block_on(serve(args))
}

async fn serve(args: gateway::Args) -> anyhow::Result<()> {
    if args.check_config {
        check_config("gateway", args.into_config());
    }
    let telemetry = rooms_telemetry::init(args.log_format, "rooms-gateway");
    let (listen, admin_listen) = (args.listen, args.admin_listen);
    let config = config_or_exit("gateway", args.into_config());
    let listeners = gateway::Listeners {
        http: rooms_server::listen::bind(listen).with_context(|| format!("binding {listen}"))?,
        admin: rooms_server::listen::bind(admin_listen)
            .with_context(|| format!("binding {admin_listen}"))?,
    };
    let result = gateway::run(listeners, config, shutdown::signal()).await;
    telemetry.shutdown().await;
    Ok(result?)
}
