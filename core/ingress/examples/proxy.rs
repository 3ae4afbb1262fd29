//! Runs the ingress alone, for load tests against other proxies:
//! `cargo run --release -p paastech-ingress --example proxy -- 127.0.0.1:8000 localhost blog=127.0.0.1:9000`
//! (`INGRESS_THREADS=N` sets how many threads proxy).

use std::net::SocketAddr;

use paastech_ingress::{IngressConfig, RouteTable, serve};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: proxy LISTEN DOMAIN NAME=BACKEND[,BACKEND…]…";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let domain = args.next().ok_or(usage)?;
    let table = RouteTable::new();
    for route in args {
        let (name, backends) = route.split_once('=').ok_or(usage)?;
        let addrs = backends.split(',').map(str::parse).collect::<Result<Vec<SocketAddr>, _>>()?;
        table.set_backends(name, addrs);
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut config = IngressConfig::new(domain);
    // As `[ingress] threads` in the server's configuration.
    if let Ok(threads) = std::env::var("INGRESS_THREADS") {
        config.threads = threads.parse()?;
    }
    serve(listener, config, table, shutdown).await;
    Ok(())
}
