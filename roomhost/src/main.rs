use anyhow::Context;
use clap::Parser;
use rooms_server::{
    check::{check_config, config_or_exit},
    shutdown,
};

fn main() -> anyhow::Result<()> {
    let args = roomhost::Args::parse();
    let runtime = rooms_server::runtime::build(args.worker_threads).context("starting tokio")?;
    runtime.block_on(serve(args))
}

async fn serve(args: roomhost::Args) -> anyhow::Result<()> {
    if args.check_config {
        check_config("roomhost", args.into_config());
    }
    let telemetry = rooms_telemetry::init(args.log_format, "rooms-roomhost");
    let (listen, metrics_listen) = (args.listen, args.metrics_listen);
    let config = config_or_exit("roomhost", args.into_config());
    let listeners = roomhost::Listeners {
        grpc: rooms_server::listen::bind(listen).with_context(|| format!("binding {listen}"))?,
        http: Some(
            rooms_server::listen::bind(metrics_listen)
                .with_context(|| format!("binding {metrics_listen}"))?,
        ),
    };
    let metrics = std::sync::Arc::new(roomhost::Metrics::new());
    let rooms = metrics.rooms_active.clone();
    rooms_server::memory::spawn_reclaimer(move || rooms.get());
    let result = roomhost::run(listeners, config, metrics, shutdown::signal()).await;
    telemetry.shutdown().await;
    Ok(result?)
}
