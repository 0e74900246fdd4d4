//! The quickstart's gRPC upstream (Service B, `demo.flights.v1.FlightService`):
//!
//!     cargo run --example flights_upstream -- 127.0.0.1:9091
//!
//! Envoy routes the `/demo.flights.v1.FlightService/` calls to it once onbehalf allowed them.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9091".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "demo.flights.v1.FlightService on {}",
        listener.local_addr()?
    );
    onbehalf::demo::serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
